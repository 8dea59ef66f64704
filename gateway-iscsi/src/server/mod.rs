//! The iSCSI target server: TCP connections, login, and the full feature phase
//! (RFC 7143, ErrorRecoveryLevel 0, one connection per session).
//!
//! [`Server::serve`] accepts connections and runs each on its own task. A connection reads
//! one PDU at a time ([`framer`]) and first drives the sans-IO [`crate::login::Login`]; a
//! normal session then opens its target's device through [`Volumes`] and builds the
//! [`crate::scsi::Lun`] before the final login response goes out (a failure there answers
//! the login with a target error). In full feature phase the connection's reader:
//! - checks every CmdSN against the window ([`window`]), which also caps the SCSI tasks in
//!   flight;
//! - collects each write's data from immediate data, unsolicited Data-Out and R2Ts
//!   ([`transfer`]), never buffering more than the command needs;
//! - runs each command on its own task (commands execute concurrently) and answers with
//!   Data-In and status ([`response`]) once [`crate::scsi::Lun::execute`] returns, so a
//!   WRITE's status follows the device's acknowledgement;
//! - answers NOP-Out, Text (SendTargets), task management, Logout, and rejects SNACK and
//!   malformed PDUs; header digest and framing errors drop the connection;
//! - pings a silent initiator with NOP-In and drops it if it never answers.
//!
//! A single writer task per connection stamps StatSN, ExpCmdSN and MaxCmdSN on every PDU as
//! it is sent ([`writer`]), so the numbers are in order on the wire whatever order the tasks
//! finish in.
//!
//! Limits: connections and sessions per server, the command window per session, immediate
//! commands per session, the data-out bytes of one command (what the SCSI layer asks for,
//! at most [`transfer::DATA_OUT_LEN_MAX`]), the data-out bytes of all commands of the server
//! together ([`budget`]), the login duration, the idle time before a ping and the time to
//! answer it, and how long a send may block.

mod budget;
mod connection;
mod framer;
mod mem;
mod response;
mod session;
mod transfer;
mod window;
mod writer;

use std::{
    collections::HashMap,
    future::Future,
    num::NonZeroU16,
    sync::{Arc, Mutex, PoisonError, RwLock, atomic::AtomicU64},
    time::Duration,
};

pub use budget::{
    DATA_OUT_BUDGET_BYTES_DEFAULT, DATA_OUT_BUDGET_BYTES_MAX, DATA_OUT_BUDGET_BYTES_MIN,
    DataOutBudgetStats,
};
pub use mem::MemVolumes;
use tokio::{
    net::TcpListener,
    sync::{Notify, Semaphore, watch},
};

use crate::{login::CheckedConfig, pdu::Isid, scsi};

/// Where a target's LUN 0 comes from: cairn implements it over its volumes.
pub trait Volumes: Send + Sync + 'static {
    /// The device type behind a target.
    type Device: scsi::BlockDevice + 'static;
    /// The device behind target `target_name` (an IQN from the login config), opened once
    /// per session at login. The error is logged and the login fails with a target error.
    fn open(
        &self,
        target_name: &str,
    ) -> impl Future<Output = Result<(Self::Device, scsi::VolumeId), String>> + Send;
}

/// Most connections one server holds, in login or full feature phase. Each costs a receive
/// buffer of up to MaxRecvDataSegmentLength plus the data of its commands in flight.
pub const CONNECTIONS_MAX_DEFAULT: u32 = 256;
/// Most sessions one server holds; one connection each.
pub const SESSIONS_MAX_DEFAULT: u32 = 256;

/// What a server needs besides its volumes and reservations.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Targets, CHAP, ACLs and the operational limits we offer. Its `cmd_window` is also the
    /// most SCSI commands a session may have in flight.
    pub login: Arc<CheckedConfig>,
    /// TargetAddress answered to SendTargets, `host:port,tpgt` (e.g. `127.0.0.1:3260,1`).
    pub portal: String,
    /// Most connections at once (login included); more are closed as they are accepted.
    pub connections_max: u32,
    /// Most sessions at once; a login beyond it fails with "out of resources".
    pub sessions_max: u32,
    /// Most immediate commands (I bit, outside the CmdSN window) a session may have in
    /// flight; more are rejected.
    pub immediate_commands_max: u32,
    /// How long a login may take, from the connection's first byte to full feature phase.
    pub login_timeout: Duration,
    /// Silence after which we send a NOP-In ping.
    pub nop_interval: Duration,
    /// How long the initiator has to answer a ping (or send anything) before we drop it.
    pub nop_timeout: Duration,
    /// How long a send may block on an initiator that does not read.
    pub send_timeout: Duration,
    /// The most bytes of data-out (write data, parameter lists) the commands of all sessions
    /// may hold at once; a command whose buffer does not fit waits for it before its R2Ts go
    /// out. Within [`DATA_OUT_BUDGET_BYTES_MIN`] (one command's largest buffer) and
    /// [`DATA_OUT_BUDGET_BYTES_MAX`].
    pub data_out_budget_bytes: u64,
}

impl ServerConfig {
    /// A configuration with the default limits.
    pub fn new(login: Arc<CheckedConfig>, portal: String) -> ServerConfig {
        ServerConfig {
            login,
            portal,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            sessions_max: SESSIONS_MAX_DEFAULT,
            immediate_commands_max: 16,
            login_timeout: Duration::from_secs(30),
            nop_interval: Duration::from_secs(30),
            nop_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
            data_out_budget_bytes: DATA_OUT_BUDGET_BYTES_DEFAULT,
        }
    }
}

/// Who a normal session is: a second login with the same key reinstates the session (RFC
/// 7143 section 6.3.5) and the old one is closed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SessionKey {
    initiator_name: String,
    isid: Isid,
    target_name: String,
}

impl SessionKey {
    pub(crate) fn new(initiator_name: &str, isid: Isid, target_name: &str) -> SessionKey {
        SessionKey {
            initiator_name: initiator_name.to_ascii_lowercase(),
            isid,
            target_name: target_name.to_ascii_lowercase(),
        }
    }
}

#[derive(Debug)]
struct SessionEntry {
    key: Option<SessionKey>,
    close: Arc<Notify>,
}

/// The sessions of a server, by TSIH.
#[derive(Debug, Default)]
struct Sessions {
    by_tsih: HashMap<u16, SessionEntry>,
    last_tsih: u16,
}

/// A TSIH held by a connection; freed on drop.
pub(crate) struct SessionHandle<V: Volumes, R: scsi::ReservationStore + 'static> {
    server: Arc<Server<V, R>>,
    tsih: NonZeroU16,
    close: Arc<Notify>,
}

impl<V: Volumes, R: scsi::ReservationStore + 'static> SessionHandle<V, R> {
    pub(crate) fn tsih(&self) -> NonZeroU16 {
        self.tsih
    }

    /// Resolves when another login reinstates this session.
    pub(crate) fn close(&self) -> Arc<Notify> {
        Arc::clone(&self.close)
    }

    /// Names this session; closes any other session with the same key.
    pub(crate) fn register(&self, key: SessionKey) {
        let mut sessions = self.server.sessions();
        for (tsih, entry) in sessions.by_tsih.iter() {
            if *tsih != self.tsih.get() && entry.key.as_ref() == Some(&key) {
                tracing::info!(
                    tsih,
                    "session reinstated by a new login: closing the old one"
                );
                entry.close.notify_one();
            }
        }
        if let Some(entry) = sessions.by_tsih.get_mut(&self.tsih.get()) {
            entry.key = Some(key);
        }
    }
}

impl<V: Volumes, R: scsi::ReservationStore + 'static> Drop for SessionHandle<V, R> {
    fn drop(&mut self) {
        let removed = self.server.sessions().by_tsih.remove(&self.tsih.get());
        assert!(removed.is_some(), "TSIH {} freed twice", self.tsih);
    }
}

/// An iSCSI target server over the devices of `V`, with persistent reservations in `R`.
pub struct Server<V: Volumes, R: scsi::ReservationStore + 'static> {
    config: ServerConfig,
    login: RwLock<Arc<CheckedConfig>>,
    volumes: V,
    reservations: Arc<R>,
    connections: Arc<Semaphore>,
    /// Data-out bytes the commands of every session share.
    data_out_budget: budget::DataOutBudget,
    sessions: Mutex<Sessions>,
    /// Resets per target (lower-case name): sessions compare it with the count they have
    /// reported to raise the reset unit attention once on each I_T nexus. One small entry
    /// per target that ever had a normal session.
    resets: Mutex<HashMap<String, Arc<AtomicU64>>>,
    shutdown: watch::Sender<bool>,
}

impl<V: Volumes, R: scsi::ReservationStore + 'static> Server<V, R> {
    /// A server; nothing happens until [`Server::serve`]. Panics on limits of zero, on a
    /// data-out budget out of its bounds and on a portal that is not a valid text value
    /// (programmer errors in the configuration).
    pub fn new(config: ServerConfig, volumes: V, reservations: R) -> Arc<Self> {
        assert!(config.connections_max >= 1);
        assert!(config.sessions_max >= 1 && config.sessions_max < u32::from(u16::MAX));
        assert!(!config.nop_interval.is_zero() && !config.nop_timeout.is_zero());
        // The portal is sent as a text value in SendTargets answers.
        assert!(
            !config.portal.is_empty()
                && config.portal.len() <= crate::login::text::VALUE_LEN_MAX
                && !config.portal.contains('\0'),
            "portal {:?} is not a valid TargetAddress",
            config.portal
        );
        let connections = Arc::new(Semaphore::new(config.connections_max as usize));
        let data_out_budget = budget::DataOutBudget::new(config.data_out_budget_bytes);
        Arc::new(Server {
            login: RwLock::new(Arc::clone(&config.login)),
            config,
            volumes,
            reservations: Arc::new(reservations),
            connections,
            data_out_budget,
            sessions: Mutex::new(Sessions::default()),
            resets: Mutex::new(HashMap::new()),
            shutdown: watch::channel(false).0,
        })
    }

    /// Replaces the login config (targets come and go as volumes are created); sessions
    /// already logged in keep going.
    pub fn set_login_config(&self, login: Arc<CheckedConfig>) {
        *self.login.write().unwrap_or_else(PoisonError::into_inner) = login;
    }

    /// The login config new logins use.
    pub fn login_config(&self) -> Arc<CheckedConfig> {
        Arc::clone(&self.login.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Sessions logged in or logging in.
    pub fn session_count(&self) -> usize {
        self.sessions().by_tsih.len()
    }

    /// How the data-out budget is used: capacity, bytes granted now, the peak, and how many
    /// commands had to wait.
    pub fn data_out_budget(&self) -> DataOutBudgetStats {
        self.data_out_budget.stats()
    }

    /// Accepts connections until the listener fails or `shutdown` resolves; each
    /// connection on its own task. When `shutdown` resolves, open connections are closed
    /// too (their commands in flight finish first).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let mut shutdown = std::pin::pin!(shutdown);
        let result = loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break Ok(()),
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
                        tracing::warn!(%peer, max = self.config.connections_max,
                            "connection refused: too many connections");
                        continue;
                    };
                    let server = Arc::clone(&self);
                    tokio::spawn(async move {
                        connection::run(server, stream, peer).await;
                        drop(permit);
                    });
                }
                // Errors of one incoming connection (reset before accept) are not the
                // listener's; out of file descriptors passes once connections close.
                Err(error) if is_transient(&error) => {
                    tracing::warn!(%error, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => break Err(error),
            }
        };
        self.shutdown.send_replace(true);
        result
    }

    /// The reset count of `target_name`, shared by its sessions.
    pub(crate) fn reset_count(&self, target_name: &str) -> Arc<AtomicU64> {
        let mut resets = self.resets.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(resets.entry(target_name.to_ascii_lowercase()).or_default())
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        // Each update is one map operation: a poisoned lock still holds a consistent map.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Allocates a TSIH for a login, or `None` when the server holds `sessions_max`.
    pub(crate) fn open_session(self: &Arc<Self>) -> Option<SessionHandle<V, R>> {
        let mut sessions = self.sessions();
        if sessions.by_tsih.len() >= self.config.sessions_max as usize {
            return None;
        }
        // sessions_max < 65535, so a free non-zero TSIH exists; the scan is bounded by it.
        let tsih = loop {
            sessions.last_tsih = sessions.last_tsih.wrapping_add(1);
            if sessions.last_tsih != 0 && !sessions.by_tsih.contains_key(&sessions.last_tsih) {
                break sessions.last_tsih;
            }
        };
        let close = Arc::new(Notify::new());
        sessions.by_tsih.insert(
            tsih,
            SessionEntry {
                key: None,
                close: Arc::clone(&close),
            },
        );
        Some(SessionHandle {
            server: Arc::clone(self),
            tsih: NonZeroU16::new(tsih).expect("invariant: zero skipped"),
            close,
        })
    }
}

fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::Interrupted
            | ErrorKind::WouldBlock // ENFILE and EMFILE on Linux.
    ) || matches!(error.raw_os_error(), Some(23 | 24))
}
