//! Login phase as a sans-IO state machine per connection (RFC 7143 sections 6, 12, 13), CHAP
//! (RFC 1994), and text negotiation after login (SendTargets).
//!
//! The server decodes each Login Request with [`crate::pdu::Digests::NONE`] and a `max_data`
//! of [`LOGIN_DATA_SEGMENT_LEN_MAX`] (digests and MaxRecvDataSegmentLength take effect only
//! after login), hands it to [`Login::on_request`] with 16 fresh random bytes, sends the
//! returned response, and then:
//! - [`LoginOutcome::InProgress`]: reads the next request;
//! - [`LoginOutcome::Complete`]: enters full feature phase with the negotiated
//!   [`SessionParams`] (its digests apply from the next PDU on);
//! - [`LoginOutcome::Failed`]: closes the connection after sending the response.
//!
//! During login any PDU decode error or non-login opcode is fatal: login errors are answered by a
//! Login Response status, never a Reject PDU.
//!
//! Stages: a login starts in Security (CSG=0) or, when the target needs no authentication,
//! may start directly in Operational (CSG=1). The target follows the initiator's T bit as soon
//! as what it needs is done: authentication before leaving Security; nothing else. It never
//! originates negotiable keys, only declarations: TargetPortalGroupTag in the first response
//! of a normal session, and MaxRecvDataSegmentLength plus TargetAlias in the first response
//! sent from the operational stage (or in the final response when the initiator skips it).

pub mod chap;
pub mod config;
pub mod discovery;
pub mod negotiate;
#[cfg(test)]
mod tests;
pub mod text;

use std::{num::NonZeroU16, sync::Arc};

pub use chap::{ChapAuth, ChapCredentials, ChapSecret};
pub use config::{CheckedConfig, ConfigError, LoginConfig, TargetConfig};
pub use discovery::{StatusSeq, TextContext, TextExchange, TextExchangeError, send_targets};
pub use negotiate::{OperationalLimits, SessionParams, SessionType};
use text::{Pairs, TextError};

use crate::pdu::{Isid, LoginRequest, LoginResponse, LoginStatus, Stage};

/// The only iSCSI version there is (RFC 7143, Login Request version fields): 0x00.
pub const VERSION: u8 = 0x00;
/// Largest data segment during login: the default MaxRecvDataSegmentLength, in force until
/// login completes (RFC 7143, MaxRecvDataSegmentLength key). Pass it as `max_data` when decoding Login
/// Requests; our Login Responses never exceed it either.
pub const LOGIN_DATA_SEGMENT_LEN_MAX: u32 = 8192;
/// StatSN of the first Login Response on a connection. Any value is valid; later responses
/// count up from it.
pub const INITIAL_STAT_SN: u32 = 1;
/// Largest text response of one text exchange (spread over PDUs with the C bit); the
/// SendTargets answer for [`config::TARGETS_MAX`] targets fits.
pub const TEXT_RESPONSE_LEN_MAX: usize = 1024 * 1024;

/// Longest answer text a login response may need: one answer per received pair (a key of at
/// most 63 bytes, '=', "NotUnderstood", NUL), plus our declarations and CHAP values.
const LOGIN_ANSWERS_LEN_MAX: usize = text::PAIRS_MAX * (text::KEY_LEN_MAX + 15)
    // AuthMethod, CHAP_A, CHAP_I, CHAP_C, CHAP_N (user up to 255 bytes), CHAP_R.
    + 16 + 10 + 12 + 8 + 2 * chap::CHALLENGE_LEN
    + 8 + chap::SECRET_LEN_MAX
    + 8 + 2 + 2 * chap::RESPONSE_LEN
    // TargetPortalGroupTag, MaxRecvDataSegmentLength, TargetAlias.
    + 28 + 34 + 13 + text::VALUE_LEN_MAX;
const _: () = assert!(LOGIN_ANSWERS_LEN_MAX <= LOGIN_DATA_SEGMENT_LEN_MAX as usize);

/// Keys naming who logs in to what; taken from the first request.
const IDENTITY_KEYS: &[&str] = &["InitiatorName", "SessionType", "TargetName"];
/// Security-stage keys (RFC 7143 section 12).
const SECURITY_KEYS: &[&str] = &[
    "AuthMethod",
    "CHAP_A",
    "CHAP_I",
    "CHAP_C",
    "CHAP_N",
    "CHAP_R",
];
/// Keys only a target may send; an initiator sending them gets `Reject`.
const TARGET_ONLY_KEYS: &[&str] = &[
    "TargetAlias",
    "TargetAddress",
    "TargetPortalGroupTag",
    "SendTargets",
];

/// Why a login failed; [`LoginError::status`] maps it to the Login Response status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The initiator broke the login protocol.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The text was malformed.
    #[error("malformed login text: {0}")]
    Text(#[from] TextError),
    /// No common version.
    #[error("version range {min}..={max} does not include 0")]
    UnsupportedVersion {
        /// Version-min.
        min: u8,
        /// Version-max.
        max: u8,
    },
    /// A key the first request must carry is absent.
    #[error("missing key {0}")]
    MissingKey(&'static str),
    /// SessionType is neither Discovery nor Normal.
    #[error("session type {0:?} is not supported")]
    SessionTypeNotSupported(String),
    /// No target of that name.
    #[error("target {0:?} not found")]
    TargetNotFound(String),
    /// The initiator is not in the target's ACL.
    #[error("initiator {initiator:?} may not access target {target:?}")]
    NotAuthorized {
        /// InitiatorName.
        initiator: String,
        /// TargetName.
        target: String,
    },
    /// Authentication failed or could not be negotiated.
    #[error("authentication failed: {0}")]
    Authentication(&'static str),
    /// A non-zero TSIH: adding a connection to a session, or reinstating one, is not supported.
    #[error("TSIH {0} names a session this login cannot join")]
    UnknownSession(u16),
    /// The text spread over Continue PDUs exceeds [`text::TEXT_LEN_MAX`].
    #[error("login text exceeds {max} bytes")]
    TextTooLong {
        /// The limit.
        max: usize,
    },
    /// A request arrived after the login had completed or failed.
    #[error("the login has already ended")]
    Finished,
}

impl LoginError {
    /// The Login Response status for this error (the one place errors map to statuses).
    pub fn status(&self) -> LoginStatus {
        match self {
            LoginError::Protocol(_) | LoginError::Text(_) | LoginError::Finished => {
                LoginStatus::INITIATOR_ERROR
            }
            LoginError::UnsupportedVersion { .. } => LoginStatus::UNSUPPORTED_VERSION,
            LoginError::MissingKey(_) => LoginStatus::MISSING_PARAMETER,
            LoginError::SessionTypeNotSupported(_) => LoginStatus::SESSION_TYPE_NOT_SUPPORTED,
            LoginError::TargetNotFound(_) => LoginStatus::NOT_FOUND,
            LoginError::NotAuthorized { .. } => LoginStatus::AUTHORIZATION_FAILURE,
            LoginError::Authentication(_) => LoginStatus::AUTHENTICATION_FAILURE,
            LoginError::UnknownSession(_) => LoginStatus::SESSION_DOES_NOT_EXIST,
            // Our own limit, not a protocol rule: a target resource error.
            LoginError::TextTooLong { .. } => LoginStatus::OUT_OF_RESOURCES,
        }
    }
}

/// A completed login: what the session layer needs to run full feature phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginComplete {
    /// Negotiated parameters.
    pub params: SessionParams,
    /// Discovery or normal.
    pub session_type: SessionType,
    /// InitiatorName.
    pub initiator_name: String,
    /// InitiatorAlias, if declared.
    pub initiator_alias: Option<String>,
    /// TargetName as configured (normal sessions), `None` for discovery.
    pub target_name: Option<String>,
    /// CHAP_N the initiator authenticated as, if CHAP was used.
    pub chap_user: Option<String>,
    /// ISID.
    pub isid: Isid,
    /// TSIH given to the new session (the one passed to [`Login::new`]).
    pub tsih: u16,
    /// CID of this connection.
    pub cid: u16,
    /// The CmdSN the session expects next (the login's CmdSN: login requests are immediate).
    pub exp_cmd_sn: u32,
    /// StatSN for the next response on this connection.
    pub next_stat_sn: u32,
}

/// What happened with one Login Request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Send the response and read the next request.
    InProgress,
    /// Send the response; the connection is in full feature phase.
    Complete(Box<LoginComplete>),
    /// Send the response (it carries the error's status) and close the connection.
    Failed(LoginError),
}

/// The response to send and what it means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginStep {
    /// The Login Response to send.
    pub response: LoginResponse,
    /// Whether the login goes on, completed, or failed.
    pub outcome: LoginOutcome,
}

/// Who logs in to what, fixed by the first request.
#[derive(Clone, Debug)]
struct Identity {
    isid: Isid,
    cid: u16,
    initiator_name: String,
    initiator_alias: Option<String>,
    session_type: SessionType,
    /// Index of the target in the configuration (normal sessions).
    target: Option<usize>,
}

/// Authentication progress in the security stage.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Auth {
    /// AuthMethod not negotiated yet.
    NotStarted,
    /// AuthMethod=None agreed.
    Skipped,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    AwaitAlgorithm,
    /// Challenge sent; waiting for CHAP_N and CHAP_R.
    AwaitResponse {
        identifier: u8,
        challenge: [u8; chap::CHALLENGE_LEN],
    },
    /// The initiator proved it knows the secret for `user`.
    Authenticated { user: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Negotiating,
    Complete,
    Failed,
}

/// A login in progress on one connection.
#[derive(Debug)]
pub struct Login {
    config: Arc<CheckedConfig>,
    tsih: NonZeroU16,
    phase: Phase,
    /// The stage both sides are in (CSG of the next request).
    stage: Option<Stage>,
    identity: Option<Identity>,
    auth: Auth,
    params: SessionParams,
    /// Operational keys already negotiated; RFC 7143 section 6 forbids a second time.
    /// Bounded by the number of operational keys.
    negotiated: Vec<String>,
    /// Text of Login Requests with the C bit, until the final piece arrives.
    pending: Vec<u8>,
    /// Whether MaxRecvDataSegmentLength (and TargetAlias) were declared.
    declared: bool,
    stat_sn: u32,
}

/// The response fields a successful step decides.
struct Reply {
    transit: bool,
    answers: Vec<(String, String)>,
    complete: bool,
}

impl Login {
    /// A login on a new connection. `tsih` is the handle the session gets if this login
    /// creates one; the caller allocates it (and frees it if the login fails).
    pub fn new(config: Arc<CheckedConfig>, tsih: NonZeroU16) -> Login {
        Login {
            config,
            tsih,
            phase: Phase::Negotiating,
            stage: None,
            identity: None,
            auth: Auth::NotStarted,
            params: SessionParams::default(),
            negotiated: Vec::new(),
            pending: Vec::new(),
            declared: false,
            stat_sn: INITIAL_STAT_SN,
        }
    }

    /// Handles one Login Request. `random` must be fresh unpredictable bytes for each call:
    /// they become the CHAP identifier and challenge when this request starts CHAP.
    pub fn on_request(&mut self, request: &LoginRequest, random: &[u8; 16]) -> LoginStep {
        let stat_sn = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        let window = self.config.get().cmd_window;
        assert!(window >= 1);
        let mut response = LoginResponse {
            transit: false,
            cont: false,
            csg: request.csg,
            nsg: Stage::Security,
            version_max: VERSION,
            version_active: VERSION,
            isid: request.isid,
            tsih: 0,
            itt: request.itt,
            stat_sn,
            // Login requests are immediate: CmdSN does not advance during login.
            exp_cmd_sn: request.cmd_sn,
            max_cmd_sn: request.cmd_sn.wrapping_add(window - 1),
            status: LoginStatus::SUCCESS,
            data: Vec::new(),
        };
        match self.step(request, random) {
            Ok(reply) => {
                text::encode(&reply.answers, &mut response.data);
                assert!(response.data.len() <= LOGIN_DATA_SEGMENT_LEN_MAX as usize);
                response.transit = reply.transit;
                if reply.transit {
                    response.nsg = request.nsg;
                }
                let outcome = if reply.complete {
                    assert!(reply.transit);
                    assert_eq!(request.nsg, Stage::FullFeature);
                    self.phase = Phase::Complete;
                    response.tsih = self.tsih.get();
                    LoginOutcome::Complete(Box::new(self.completion(request)))
                } else {
                    LoginOutcome::InProgress
                };
                LoginStep { response, outcome }
            }
            Err(error) => {
                self.phase = Phase::Failed;
                response.status = error.status();
                assert!(!response.status.is_success());
                LoginStep {
                    response,
                    outcome: LoginOutcome::Failed(error),
                }
            }
        }
    }

    fn completion(&self, request: &LoginRequest) -> LoginComplete {
        let identity = self
            .identity
            .as_ref()
            .expect("invariant: identity set by the first request");
        let config = self.config.get();
        let mut params = self.params.clone();
        params.target_max_recv_data_segment_len = config.limits.max_recv_data_segment_len;
        assert!(params.first_burst_len <= params.max_burst_len);
        LoginComplete {
            params,
            session_type: identity.session_type,
            initiator_name: identity.initiator_name.clone(),
            initiator_alias: identity.initiator_alias.clone(),
            target_name: identity
                .target
                .map(|index| config.targets[index].name.clone()),
            chap_user: match &self.auth {
                Auth::Authenticated { user } => Some(user.clone()),
                _ => None,
            },
            isid: identity.isid,
            tsih: self.tsih.get(),
            cid: identity.cid,
            exp_cmd_sn: request.cmd_sn,
            next_stat_sn: self.stat_sn,
        }
    }

    fn step(&mut self, request: &LoginRequest, random: &[u8; 16]) -> Result<Reply, LoginError> {
        if self.phase != Phase::Negotiating {
            return Err(LoginError::Finished);
        }
        // We speak version 0 only: the initiator's range must include it.
        if request.version_min > VERSION || request.version_max < request.version_min {
            return Err(LoginError::UnsupportedVersion {
                min: request.version_min,
                max: request.version_max,
            });
        }
        if request.transit && request.cont {
            return Err(LoginError::Protocol("T and C bits both set"));
        }
        match (&self.identity, self.stage) {
            (Some(identity), Some(stage)) => {
                if request.isid != identity.isid || request.cid != identity.cid || request.tsih != 0
                {
                    return Err(LoginError::Protocol(
                        "ISID, CID or TSIH changed during login",
                    ));
                }
                if request.csg != stage {
                    return Err(LoginError::Protocol("CSG is not the current stage"));
                }
            }
            (None, provisional) => {
                // The first request, possibly in Continue pieces (`provisional` is their CSG).
                if request.tsih != 0 {
                    return Err(LoginError::UnknownSession(request.tsih));
                }
                if !matches!(request.csg, Stage::Security | Stage::Operational) {
                    return Err(LoginError::Protocol(
                        "login must start in a negotiation stage",
                    ));
                }
                if provisional.is_some_and(|stage| stage != request.csg) {
                    return Err(LoginError::Protocol("CSG changed between Continue pieces"));
                }
            }
            (Some(_), None) => unreachable!("identify sets the stage with the identity"),
        }

        if request.cont {
            // RFC 7143 (C bit): answer a partial text with an empty response, same stage.
            if self.pending.len() + request.data.len() > text::TEXT_LEN_MAX {
                return Err(LoginError::TextTooLong {
                    max: text::TEXT_LEN_MAX,
                });
            }
            self.pending.extend_from_slice(&request.data);
            // The first request's identity keys may arrive with its last piece; remember the
            // stage so that all pieces agree.
            self.stage.get_or_insert(request.csg);
            return Ok(Reply {
                transit: false,
                answers: Vec::new(),
                complete: false,
            });
        }
        let mut whole = std::mem::take(&mut self.pending);
        if whole.len() + request.data.len() > text::TEXT_LEN_MAX {
            return Err(LoginError::TextTooLong {
                max: text::TEXT_LEN_MAX,
            });
        }
        whole.extend_from_slice(&request.data);
        let pairs = text::parse(&whole)?;

        let mut answers = Vec::new();
        if self.identity.is_none() {
            self.identify(request, &pairs)?;
            let identity = self.identity.as_ref().expect("invariant: identify sets it");
            if identity.session_type == SessionType::Normal {
                let tag = self.config.get().portal_group_tag;
                answers.push(("TargetPortalGroupTag".to_owned(), tag.to_string()));
            }
        } else {
            self.check_identity_unchanged(&pairs)?;
        }
        self.authenticate(&pairs, random, &mut answers)?;
        self.negotiate(&pairs, &mut answers)?;

        let stage = self
            .stage
            .expect("invariant: stage set by the first request");
        let mut transit = false;
        if request.transit {
            let next_is_later = matches!(
                (stage, request.nsg),
                (Stage::Security, Stage::Operational | Stage::FullFeature)
                    | (Stage::Operational, Stage::FullFeature)
            );
            if !next_is_later {
                return Err(LoginError::Protocol("NSG does not follow CSG"));
            }
            transit = match (&self.auth, stage) {
                (_, Stage::Operational) => true,
                (Auth::Skipped | Auth::Authenticated { .. }, _) => true,
                // Mid-CHAP: answer without T; the initiator continues the exchange.
                (Auth::AwaitAlgorithm | Auth::AwaitResponse { .. }, _) => false,
                (Auth::NotStarted, _) => {
                    if self.chap().is_some() {
                        return Err(LoginError::Authentication("leaving security without CHAP"));
                    }
                    true
                }
            };
        }
        let complete = transit && request.nsg == Stage::FullFeature;
        if !self.declared && (stage == Stage::Operational || complete) {
            self.declared = true;
            let config = self.config.get();
            let limit = config.limits.max_recv_data_segment_len;
            answers.push(("MaxRecvDataSegmentLength".to_owned(), limit.to_string()));
            if let Some(index) = self.identity.as_ref().and_then(|identity| identity.target)
                && let Some(alias) = &config.targets[index].alias
            {
                answers.push(("TargetAlias".to_owned(), alias.clone()));
            }
        }
        if transit {
            self.stage = Some(request.nsg);
        }
        Ok(Reply {
            transit,
            answers,
            complete,
        })
    }

    /// Reads InitiatorName, SessionType and TargetName from the first complete text, finds the
    /// target and checks the ACL.
    fn identify(&mut self, request: &LoginRequest, pairs: &Pairs) -> Result<(), LoginError> {
        let initiator_name = text::get(pairs, "InitiatorName")
            .filter(|name| !name.is_empty())
            .ok_or(LoginError::MissingKey("InitiatorName"))?;
        let session_type = match text::get(pairs, "SessionType") {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(other) => return Err(LoginError::SessionTypeNotSupported(other.to_owned())),
        };
        let config = Arc::clone(&self.config);
        let target = match session_type {
            SessionType::Discovery => None,
            SessionType::Normal => {
                let name = text::get(pairs, "TargetName")
                    .filter(|name| !name.is_empty())
                    .ok_or(LoginError::MissingKey("TargetName"))?;
                let index = config
                    .get()
                    .targets
                    .iter()
                    .position(|target| target.name.eq_ignore_ascii_case(name))
                    .ok_or_else(|| LoginError::TargetNotFound(name.to_owned()))?;
                if !config.get().targets[index].allows(initiator_name) {
                    return Err(LoginError::NotAuthorized {
                        initiator: initiator_name.to_owned(),
                        target: name.to_owned(),
                    });
                }
                Some(index)
            }
        };
        self.identity = Some(Identity {
            isid: request.isid,
            cid: request.cid,
            initiator_name: initiator_name.to_owned(),
            initiator_alias: text::get(pairs, "InitiatorAlias").map(str::to_owned),
            session_type,
            target,
        });
        self.stage = Some(request.csg);
        if request.csg == Stage::Operational && self.chap().is_some() {
            return Err(LoginError::Authentication(
                "security stage skipped but CHAP is required",
            ));
        }
        Ok(())
    }

    fn check_identity_unchanged(&self, pairs: &Pairs) -> Result<(), LoginError> {
        let identity = self
            .identity
            .as_ref()
            .expect("invariant: called after identify");
        let config = self.config.get();
        for (key, value) in pairs {
            let same = match key.as_str() {
                "InitiatorName" => value.eq_ignore_ascii_case(&identity.initiator_name),
                "SessionType" => {
                    let current = match identity.session_type {
                        SessionType::Discovery => "Discovery",
                        SessionType::Normal => "Normal",
                    };
                    value == current
                }
                "TargetName" => identity
                    .target
                    .is_none_or(|index| value.eq_ignore_ascii_case(&config.targets[index].name)),
                _ => true,
            };
            if !same {
                return Err(LoginError::Protocol("identity key changed during login"));
            }
        }
        Ok(())
    }

    /// The CHAP configuration that applies to this login, if authentication is required.
    fn chap(&self) -> Option<&ChapAuth> {
        let identity = self.identity.as_ref()?;
        let config = self.config.get();
        match identity.session_type {
            SessionType::Discovery => config.discovery_chap.as_ref(),
            SessionType::Normal => identity
                .target
                .and_then(|index| config.targets[index].chap.as_ref()),
        }
    }

    /// Handles AuthMethod and the CHAP keys (RFC 7143 section 12.1.3).
    fn authenticate(
        &mut self,
        pairs: &Pairs,
        random: &[u8; 16],
        answers: &mut Vec<(String, String)>,
    ) -> Result<(), LoginError> {
        if !pairs
            .iter()
            .any(|(key, _)| SECURITY_KEYS.contains(&key.as_str()))
        {
            return Ok(());
        }
        if self.stage != Some(Stage::Security) {
            return Err(LoginError::Protocol(
                "security key outside the security stage",
            ));
        }
        let chap = self.chap().cloned();
        if let Some(methods) = text::get(pairs, "AuthMethod") {
            if self.auth != Auth::NotStarted {
                return Err(LoginError::Protocol("AuthMethod negotiated twice"));
            }
            let offers = |method: &str| text::list(methods).any(|offered| offered == method);
            if chap.is_some() {
                if !offers("CHAP") {
                    return Err(LoginError::Authentication("initiator does not offer CHAP"));
                }
                answers.push(("AuthMethod".to_owned(), "CHAP".to_owned()));
                self.auth = Auth::AwaitAlgorithm;
            } else {
                if !offers("None") {
                    return Err(LoginError::Authentication(
                        "initiator insists on authentication this target does not configure",
                    ));
                }
                answers.push(("AuthMethod".to_owned(), "None".to_owned()));
                self.auth = Auth::Skipped;
            }
        }
        if let Some(algorithms) = text::get(pairs, "CHAP_A") {
            if self.auth != Auth::AwaitAlgorithm {
                return Err(LoginError::Protocol("CHAP_A out of order"));
            }
            if !text::list(algorithms).any(|algorithm| algorithm == chap::ALGORITHM_MD5) {
                return Err(LoginError::Authentication("no common CHAP algorithm"));
            }
            let identifier = random[0];
            let challenge = *random;
            answers.push(("CHAP_A".to_owned(), chap::ALGORITHM_MD5.to_owned()));
            answers.push(("CHAP_I".to_owned(), identifier.to_string()));
            answers.push(("CHAP_C".to_owned(), text::hex_value(&challenge)));
            self.auth = Auth::AwaitResponse {
                identifier,
                challenge,
            };
        }
        let name = text::get(pairs, "CHAP_N");
        let response = text::get(pairs, "CHAP_R");
        let peer_identifier = text::get(pairs, "CHAP_I");
        let peer_challenge = text::get(pairs, "CHAP_C");
        if name.is_none() && response.is_none() {
            if peer_identifier.is_some() || peer_challenge.is_some() {
                return Err(LoginError::Protocol(
                    "CHAP_I or CHAP_C without CHAP_N and CHAP_R",
                ));
            }
            return Ok(());
        }
        let Auth::AwaitResponse {
            identifier,
            challenge,
        } = self.auth
        else {
            return Err(LoginError::Protocol("CHAP_N or CHAP_R out of order"));
        };
        let chap = chap.expect("invariant: a challenge is only sent when CHAP is configured");
        let (Some(name), Some(response)) = (name, response) else {
            return Err(LoginError::Authentication(
                "CHAP_N and CHAP_R must come together",
            ));
        };
        let Some(response) = text::parse_binary(response) else {
            return Err(LoginError::Authentication("CHAP_R is not a binary value"));
        };
        // Check both before branching so timing does not tell which one was wrong.
        let user_matches = name == chap.initiator.user;
        let response_matches =
            chap::verify(identifier, &chap.initiator.secret, &challenge, &response);
        if !(user_matches & response_matches) {
            return Err(LoginError::Authentication("wrong CHAP_N or CHAP_R"));
        }
        if peer_identifier.is_some() || peer_challenge.is_some() {
            let (Some(peer_identifier), Some(peer_challenge)) = (peer_identifier, peer_challenge)
            else {
                return Err(LoginError::Authentication(
                    "mutual CHAP needs CHAP_I and CHAP_C",
                ));
            };
            let Some(target) = &chap.target else {
                return Err(LoginError::Authentication("mutual CHAP is not configured"));
            };
            let peer_identifier = text::parse_number(peer_identifier)
                .and_then(|number| u8::try_from(number).ok())
                .ok_or(LoginError::Authentication(
                    "CHAP_I is not a number in 0..=255",
                ))?;
            let peer_challenge = text::parse_binary(peer_challenge)
                .filter(|c| !c.is_empty() && c.len() <= chap::PEER_CHALLENGE_LEN_MAX)
                .ok_or(LoginError::Authentication(
                    "CHAP_C is not a usable challenge",
                ))?;
            // Answering our own challenge would let an attacker relay it back to us and
            // authenticate with our answer (reflection).
            if peer_challenge == challenge {
                return Err(LoginError::Authentication(
                    "initiator reflected our challenge",
                ));
            }
            let answer = chap::response(peer_identifier, &target.secret, &peer_challenge);
            answers.push(("CHAP_N".to_owned(), target.user.clone()));
            answers.push(("CHAP_R".to_owned(), text::hex_value(&answer)));
        }
        self.auth = Auth::Authenticated {
            user: name.to_owned(),
        };
        Ok(())
    }

    /// Answers operational keys, unknown keys, and keys an initiator may not send.
    fn negotiate(
        &mut self,
        pairs: &Pairs,
        answers: &mut Vec<(String, String)>,
    ) -> Result<(), LoginError> {
        let identity = self
            .identity
            .as_ref()
            .expect("invariant: called after identify");
        let session_type = identity.session_type;
        let config = Arc::clone(&self.config);
        let limits = &config.get().limits;
        for (key, value) in pairs {
            let key = key.as_str();
            if IDENTITY_KEYS.contains(&key) || SECURITY_KEYS.contains(&key) {
                continue;
            }
            if TARGET_ONLY_KEYS.contains(&key) {
                answers.push((key.to_owned(), text::REJECT.to_owned()));
                continue;
            }
            match negotiate::negotiate_key(key, value, limits, session_type, &mut self.params) {
                negotiate::KeyAnswer::NotOperational => {
                    answers.push((key.to_owned(), text::NOT_UNDERSTOOD.to_owned()));
                }
                answer => {
                    if self.negotiated.iter().any(|done| done == key) {
                        return Err(LoginError::Protocol("operational key negotiated twice"));
                    }
                    self.negotiated.push(key.to_owned());
                    if let negotiate::KeyAnswer::Respond(result) = answer {
                        answers.push((key.to_owned(), result));
                    }
                }
            }
        }
        Ok(())
    }
}
