//! One connection from accept to full feature phase: the login exchange (no digests, the
//! login data segment limit, a deadline for the whole login), TSIH allocation, opening the
//! target's device and logical unit before the final login response, then the session.

use std::{net::SocketAddr, sync::Arc};

use tokio::{
    io::AsyncWriteExt,
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use super::{
    Server, SessionHandle, SessionKey, Volumes,
    framer::{Framer, ReadError},
    session,
};
use crate::{
    login::{
        CheckedConfig, LOGIN_DATA_SEGMENT_LEN_MAX, Login, LoginComplete, LoginError, LoginOutcome,
        SessionType,
    },
    pdu::{Digests, LoginRequest, LoginResponse, LoginStatus, Pdu, PduError},
    scsi::{self, IdentityError, LunError, LunIdentity, NameError, Nexus, ReservationStore},
};

/// Why a connection ended during login.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoginFailure {
    /// The login did not finish within the login timeout.
    #[error("login timed out")]
    TimedOut,
    /// Reading failed.
    #[error("reading a login request")]
    Read(#[from] ReadError),
    /// A login request did not decode.
    #[error("malformed login request")]
    Decode(#[from] PduError),
    /// Not a Login Request during login.
    #[error("opcode {opcode:#04x} during login")]
    NotLogin {
        /// The opcode received.
        opcode: u8,
    },
    /// The login layer refused the login.
    #[error("login refused")]
    Refused(#[from] LoginError),
    /// The server holds its most sessions.
    #[error("too many sessions")]
    TooManySessions,
    /// No random bytes for CHAP.
    #[error("reading random bytes")]
    Random(#[source] std::io::Error),
    /// The volume behind the target could not be opened.
    #[error("opening the volume: {0}")]
    Volume(String),
    /// The logical unit could not be opened.
    #[error("opening the logical unit")]
    Lun(#[from] LunError),
    /// The logical unit's identity is unusable.
    #[error("logical unit identity")]
    Identity(#[from] IdentityError),
    /// The initiator or target name cannot form an I_T nexus.
    #[error("I_T nexus")]
    Nexus(#[from] NameError),
    /// Sending a login response failed.
    #[error("sending a login response")]
    Send(#[source] std::io::Error),
}

/// The logical unit type of a server's sessions.
pub(crate) type SessionLun<V, R> = scsi::Lun<<V as Volumes>::Device, Arc<R>>;

/// LUN 0 of a normal session and the session's I_T nexus.
pub(crate) type SessionUnit<V, R> = (Arc<SessionLun<V, R>>, Arc<Nexus>);

/// A connection that completed login.
pub(crate) struct Established<V: Volumes, R: ReservationStore + 'static> {
    pub(crate) complete: Box<LoginComplete>,
    /// The login configuration the login ran with (its command window holds).
    pub(crate) config: Arc<CheckedConfig>,
    /// LUN 0 and the session's I_T nexus (normal sessions).
    pub(crate) lun: Option<SessionUnit<V, R>>,
    pub(crate) handle: SessionHandle<V, R>,
}

/// Runs one accepted connection to its end.
pub(crate) async fn run<V: Volumes, R: ReservationStore + 'static>(
    server: Arc<Server<V, R>>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "TCP_NODELAY not set");
    }
    let (mut reader, mut writer) = stream.into_split();
    let mut framer = Framer::new();
    let mut shutdown = server.shutdown.subscribe();
    let timeout = server.config.login_timeout;
    let login = tokio::select! {
        result = tokio::time::timeout(
            timeout,
            login(&server, &mut reader, &mut writer, &mut framer),
        ) => result.unwrap_or(Err(LoginFailure::TimedOut)),
        _ = shutdown.changed() => return,
    };
    match login {
        Ok(established) => {
            session::run(server, established, reader, writer, framer, peer, shutdown).await;
        }
        Err(LoginFailure::Read(ReadError::Closed)) => {
            tracing::debug!(%peer, "connection closed during login");
        }
        Err(error) => {
            tracing::warn!(%peer, error = %error_chain(&error), "login failed");
            let _ = writer.shutdown().await;
        }
    }
}

/// Drives the login to full feature phase, or fails.
async fn login<V: Volumes, R: ReservationStore + 'static>(
    server: &Arc<Server<V, R>>,
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    framer: &mut Framer,
) -> Result<Established<V, R>, LoginFailure> {
    let config = server.login_config();
    let mut state: Option<(Login, SessionHandle<V, R>)> = None;
    loop {
        let request = read_login_request(reader, framer).await?;
        if state.is_none() {
            let Some(handle) = server.open_session() else {
                let response = refusal(&request, LoginStatus::OUT_OF_RESOURCES);
                send(writer, response).await?;
                return Err(LoginFailure::TooManySessions);
            };
            state = Some((Login::new(Arc::clone(&config), handle.tsih()), handle));
        }
        let (login, _) = state.as_mut().expect("invariant: set above");
        let random = match random_bytes() {
            Ok(random) => random,
            Err(error) => {
                send(writer, refusal(&request, LoginStatus::TARGET_ERROR)).await?;
                return Err(LoginFailure::Random(error));
            }
        };
        let step = login.on_request(&request, &random);
        match step.outcome {
            LoginOutcome::InProgress => send(writer, step.response).await?,
            LoginOutcome::Failed(error) => {
                send(writer, step.response).await?;
                return Err(LoginFailure::Refused(error));
            }
            LoginOutcome::Complete(complete) => {
                let (_, handle) = state.take().expect("invariant: set above");
                let lun = match open_lun(server, &config, &complete).await {
                    Ok(lun) => lun,
                    Err(error) => {
                        send(writer, refusal(&request, LoginStatus::TARGET_ERROR)).await?;
                        return Err(error);
                    }
                };
                if let Some(target_name) = &complete.target_name {
                    handle.register(SessionKey::new(
                        &complete.initiator_name,
                        complete.isid,
                        target_name,
                    ));
                }
                send(writer, step.response).await?;
                return Ok(Established {
                    complete,
                    config,
                    lun,
                    handle,
                });
            }
        }
    }
}

async fn read_login_request(
    reader: &mut OwnedReadHalf,
    framer: &mut Framer,
) -> Result<LoginRequest, LoginFailure> {
    let len = framer
        .fill(reader, Digests::NONE, LOGIN_DATA_SEGMENT_LEN_MAX)
        .await?;
    let pdu = Pdu::decode(framer.frame(len), Digests::NONE, LOGIN_DATA_SEGMENT_LEN_MAX);
    framer.consume(len);
    match pdu? {
        Pdu::LoginRequest(request) => Ok(request),
        other => Err(LoginFailure::NotLogin {
            opcode: other.opcode(),
        }),
    }
}

/// Opens the target's device and LUN 0 for a normal session; nothing for discovery.
async fn open_lun<V: Volumes, R: ReservationStore + 'static>(
    server: &Arc<Server<V, R>>,
    config: &CheckedConfig,
    complete: &LoginComplete,
) -> Result<Option<SessionUnit<V, R>>, LoginFailure> {
    if complete.session_type == SessionType::Discovery {
        return Ok(None);
    }
    let target_name = complete
        .target_name
        .as_deref()
        .expect("invariant: normal sessions name their target");
    let nexus = Nexus::new(
        &complete.initiator_name,
        complete.isid.0,
        target_name,
        config.get().portal_group_tag,
    )?;
    let (device, volume_id) = server
        .volumes
        .open(target_name)
        .await
        .map_err(LoginFailure::Volume)?;
    let identity = LunIdentity::new(volume_id, &volume_id.to_string(), Some(target_name))?;
    let lun = scsi::Lun::open(device, identity, Arc::clone(&server.reservations)).await?;
    Ok(Some((Arc::new(lun), Arc::new(nexus))))
}

/// A login response refusing `request` with `status` (a status the login layer cannot
/// produce: its resources and devices are the server's).
fn refusal(request: &LoginRequest, status: LoginStatus) -> LoginResponse {
    assert!(!status.is_success());
    LoginResponse {
        transit: false,
        cont: false,
        csg: request.csg,
        nsg: request.csg,
        version_max: crate::login::VERSION,
        version_active: crate::login::VERSION,
        isid: request.isid,
        tsih: 0,
        itt: request.itt,
        stat_sn: 0,
        exp_cmd_sn: request.cmd_sn,
        max_cmd_sn: request.cmd_sn,
        status,
        data: Vec::new(),
    }
}

async fn send(writer: &mut OwnedWriteHalf, response: LoginResponse) -> Result<(), LoginFailure> {
    let mut buf = Vec::new();
    Pdu::LoginResponse(response).encode(Digests::NONE, &mut buf);
    writer.write_all(&buf).await.map_err(LoginFailure::Send)
}

/// Fresh random bytes for CHAP challenges, from the kernel.
fn random_bytes() -> std::io::Result<[u8; 16]> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// An error and its sources on one line, for logs.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}
