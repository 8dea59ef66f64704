//! A small blocking iSCSI initiator over [`std::net::TcpStream`], on this crate's PDU codec
//! and login helpers: for other crates' tests, the `cairn-iscsi-io` tool and load generators.
//!
//! One session, one connection, one command at a time, ErrorRecoveryLevel 0. Commands go to
//! one logical unit, LUN 0 unless [`Initiator::set_lun`] names another (tgt, for one, serves
//! its disks from LUN 1). Login goes through the security stage (AuthMethod=None, or one-way
//! CHAP with MD5), then negotiates MaxRecvDataSegmentLength=262144, ImmediateData=Yes and
//! InitialR2T=No, taking MaxBurstLength and FirstBurstLength as the target answers, and
//! HeaderDigest/DataDigest=None unless [`Initiator::set_digests`] asked for CRC32C. SCSI
//! commands are READ CAPACITY (16), READ (16) and WRITE (16); a write sends immediate data
//! and unsolicited Data-Out as negotiated, then answers R2Ts.
//!
//! Fault model: the target may send anything. Every malformed, unexpected or oversized PDU,
//! every I/O error and every timeout is returned as an [`InitiatorError`]; nothing the target
//! sends makes this module panic or allocate beyond the limits below. After an error that
//! leaves the connection out of step ([`InitiatorError::is_fatal`]), the initiator refuses
//! further commands with [`InitiatorError::Broken`]; a CHECK CONDITION is not such an error.

use std::{
    fmt,
    hash::{BuildHasher, Hasher},
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    time::Duration,
};

use crate::{
    login::{
        ChapSecret, LOGIN_DATA_SEGMENT_LEN_MAX, VERSION, chap,
        negotiate::{SEGMENT_LEN_MAX, SEGMENT_LEN_MIN},
        text::{self, Pairs, TextError},
    },
    pdu::{
        BHS_LEN, DataIn, DataOut, Digests, Isid, Itt, LoginRequest, LoginResponse, LogoutReason,
        LogoutRequest, LogoutResponseCode, Lun, NopIn, NopOut, Pdu, PduError, R2t, ScsiCommand,
        ScsiResponse, Stage, Ttt, pdu_len_within,
    },
};

/// The MaxRecvDataSegmentLength we declare: the largest data segment we read after login.
/// 256 KiB bounds the receive buffer and matches this crate's target.
pub const INITIATOR_MAX_RECV_DATA_SEGMENT_LEN: u32 = 256 * 1024;
/// The largest READ or WRITE one call may move: the whole command's data sits in memory, and
/// 16 MiB is four times the largest transfer this crate's target accepts.
pub const TRANSFER_BYTES_MAX: u32 = 16 << 20;
/// Largest logical block size we accept from READ CAPACITY (SBC allows odd sizes; real
/// devices use 512 to 4096, a few 64 KiB).
pub const BLOCK_SIZE_MAX: u32 = 1 << 20;
/// Login requests per stage before we give up on a target that never lets us transit.
const LOGIN_STEPS_MAX: u32 = 8;
/// PDUs that do not advance a command (NOP-In pings, asynchronous events) we tolerate while
/// waiting for one answer; a target that only pings is broken or hostile.
const IDLE_PDUS_MAX: u32 = 1024;
/// Allocation length of READ CAPACITY (16): the 32-byte parameter data.
const READ_CAPACITY_16_LEN: u32 = 32;
/// Longest iSCSI name (RFC 7143 section 4.2.7.1: 223 bytes).
const NAME_LEN_MAX: usize = 223;

const _: () = assert!(INITIATOR_MAX_RECV_DATA_SEGMENT_LEN >= LOGIN_DATA_SEGMENT_LEN_MAX);
const _: () = assert!(INITIATOR_MAX_RECV_DATA_SEGMENT_LEN <= SEGMENT_LEN_MAX);
const _: () = assert!(BLOCK_SIZE_MAX <= TRANSFER_BYTES_MAX);

/// SCSI status GOOD.
const STATUS_GOOD: u8 = 0x00;
/// SCSI status CHECK CONDITION.
const STATUS_CHECK_CONDITION: u8 = 0x02;
/// SERVICE ACTION IN (16) opcode, with service action READ CAPACITY (16).
const SERVICE_ACTION_IN_16: u8 = 0x9e;
const SA_READ_CAPACITY_16: u8 = 0x10;
const READ_16: u8 = 0x88;
const WRITE_16: u8 = 0x8a;

/// Everything that can go wrong, from the socket up to SCSI status.
#[derive(Debug, thiserror::Error)]
pub enum InitiatorError {
    /// The TCP connection could not be established.
    #[error("connecting to {address}: {source}")]
    Connect {
        /// The portal.
        address: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// A read or write on the connection failed.
    #[error("connection I/O: {0}")]
    Io(#[source] io::Error),
    /// The target sent nothing (or did not read) within the timeout.
    #[error("no progress from the target within {timeout:?}")]
    TimedOut {
        /// The configured timeout.
        timeout: Duration,
    },
    /// The target closed the connection.
    #[error("the target closed the connection")]
    Closed,
    /// A PDU from the target could not be framed or decoded.
    #[error("undecodable PDU from the target: {0}")]
    Pdu(#[from] PduError),
    /// Login text from the target was malformed.
    #[error("malformed text from the target: {0}")]
    Text(#[from] TextError),
    /// The target broke the protocol.
    #[error("protocol violation by the target: {0}")]
    Protocol(&'static str),
    /// The target sent a PDU that has no place here.
    #[error("unexpected PDU (opcode {opcode:#04x}) from the target")]
    UnexpectedPdu {
        /// Its opcode.
        opcode: u8,
    },
    /// The target refused the login (RFC 7143 Login Response status).
    #[error("login refused: status {class:#04x}/{detail:#04x} ({meaning})")]
    LoginRefused {
        /// Status-Class.
        class: u8,
        /// Status-Detail.
        detail: u8,
        /// What the status means.
        meaning: &'static str,
    },
    /// The target did not agree to what this initiator needs.
    #[error("negotiation failed: {0}")]
    Negotiation(&'static str),
    /// The target rejected one of our PDUs.
    #[error("the target rejected a PDU, reason {reason:#04x}")]
    Rejected {
        /// Reject reason code.
        reason: u8,
    },
    /// The target announced the end of the connection or session (Asynchronous Message).
    #[error("asynchronous event {event} from the target")]
    AsyncEvent {
        /// AsyncEvent code: 1 logout requested, 2 connection drop, 3 session drop, ...
        event: u8,
    },
    /// More unrelated PDUs than [`IDLE_PDUS_MAX`] while waiting for an answer.
    #[error("the target sent {count} PDUs without answering")]
    TooManyIdlePdus {
        /// How many.
        count: u32,
    },
    /// The target's command window does not admit our next command.
    #[error("command window closed: CmdSN {cmd_sn}, MaxCmdSN {max_cmd_sn}")]
    WindowClosed {
        /// Our next CmdSN.
        cmd_sn: u32,
        /// The target's MaxCmdSN.
        max_cmd_sn: u32,
    },
    /// Data-In beyond the length the command asked for.
    #[error("Data-In of {len} bytes at offset {offset} exceeds the {expected} bytes asked for")]
    DataInOverrun {
        /// Buffer offset of the PDU.
        offset: u32,
        /// Its data length.
        len: u32,
        /// The command's expected data transfer length.
        expected: u32,
    },
    /// A read completed with less data than asked for.
    #[error("short read: {received} of {expected} bytes")]
    ShortRead {
        /// Bytes received.
        received: u32,
        /// Bytes asked for.
        expected: u32,
    },
    /// The command ended with CHECK CONDITION.
    #[error("CHECK CONDITION: sense key {sense_key:#x}, ASC {asc:#04x}, ASCQ {ascq:#04x}")]
    CheckCondition {
        /// Sense key (0 when the target sent no sense data).
        sense_key: u8,
        /// Additional sense code.
        asc: u8,
        /// Additional sense code qualifier.
        ascq: u8,
    },
    /// The command ended with another SCSI status (BUSY, RESERVATION CONFLICT, ...).
    #[error("SCSI status {status:#04x}")]
    Status {
        /// The status byte.
        status: u8,
    },
    /// The iSCSI layer could not complete the command (SCSI Response "response" field).
    #[error("iSCSI response {response:#04x}: the target failed the command")]
    TargetFailure {
        /// The response code.
        response: u8,
    },
    /// The logout did not close the session.
    #[error("logout failed: {response:?}")]
    Logout {
        /// The target's answer.
        response: LogoutResponseCode,
    },
    /// A command before [`Initiator::login`] succeeded, or a second login.
    #[error("the initiator is not in the right state: {0}")]
    State(&'static str),
    /// An earlier fatal error left the connection unusable.
    #[error("the connection is unusable after an earlier error")]
    Broken,
    /// A caller's argument cannot be sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A write whose length is not a multiple of the block size.
    #[error("{len} bytes is not a multiple of the {block_size}-byte block size")]
    Unaligned {
        /// The data length.
        len: u64,
        /// The LUN's block size.
        block_size: u32,
    },
    /// A transfer larger than [`TRANSFER_BYTES_MAX`].
    #[error("transfer of {len} bytes exceeds the limit of {max}")]
    TransferTooLong {
        /// Bytes asked for.
        len: u64,
        /// The limit.
        max: u32,
    },
}

impl InitiatorError {
    /// Whether the connection is out of step after this error: SCSI-level outcomes (CHECK
    /// CONDITION, other status, target failure) and refused arguments leave it usable.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            InitiatorError::CheckCondition { .. }
                | InitiatorError::Status { .. }
                | InitiatorError::TargetFailure { .. }
                | InitiatorError::State(_)
                | InitiatorError::InvalidArgument(_)
                | InitiatorError::Unaligned { .. }
                | InitiatorError::TransferTooLong { .. }
                | InitiatorError::ShortRead { .. }
        )
    }
}

/// What the login negotiated (RFC 7143 defaults for keys the target did not answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The target's declared MaxRecvDataSegmentLength: our largest data segment.
    pub target_max_recv_data_segment_len: u32,
    /// MaxBurstLength: the most bytes of one R2T.
    pub max_burst_len: u32,
    /// FirstBurstLength: the most unsolicited bytes (immediate included) per command.
    pub first_burst_len: u32,
    /// ImmediateData.
    pub immediate_data: bool,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// The session's TSIH.
    pub tsih: u16,
    /// The CRC32C digests in effect from the first PDU after login.
    pub digests: Digests,
}

impl Default for Negotiated {
    fn default() -> Negotiated {
        Negotiated {
            target_max_recv_data_segment_len: 8192,
            max_burst_len: 262_144,
            first_burst_len: 65_536,
            immediate_data: true,
            initial_r2t: true,
            tsih: 0,
            digests: Digests::NONE,
        }
    }
}

/// A login response, its text gathered over Continue PDUs.
struct LoginReply {
    transit: bool,
    nsg: Stage,
    /// TSIH (non-zero on the final response).
    tsih: u16,
    pairs: Pairs,
}

/// A session with one target over one connection.
pub struct Initiator {
    stream: TcpStream,
    timeout: Duration,
    isid: Isid,
    /// The logical unit commands go to.
    lun: Lun,
    /// The digests login proposes (CRC32C where set, None otherwise).
    digests_wanted: Digests,
    /// Set by a successful login.
    session: Option<Negotiated>,
    /// The LUN's block size, from READ CAPACITY (16).
    block_size: Option<u32>,
    itt_next: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
    broken: bool,
    /// Receive buffer: one PDU, at most BHS + [`INITIATOR_MAX_RECV_DATA_SEGMENT_LEN`].
    frame: Vec<u8>,
    /// Send buffer: one encoded PDU.
    encoded: Vec<u8>,
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The buffers are left out: up to 256 KiB of bytes each.
        f.debug_struct("Initiator")
            .field("peer", &self.stream.peer_addr().ok())
            .field("isid", &self.isid)
            .field("lun", &self.lun)
            .field("session", &self.session)
            .field("block_size", &self.block_size)
            .field("cmd_sn", &self.cmd_sn)
            .field("exp_stat_sn", &self.exp_stat_sn)
            .field("max_cmd_sn", &self.max_cmd_sn)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// Connects to the portal at `address`. `timeout` bounds the connect and every later read
    /// and write on the socket.
    pub fn connect(address: SocketAddr, timeout: Duration) -> Result<Initiator, InitiatorError> {
        if timeout.is_zero() {
            return Err(InitiatorError::InvalidArgument("zero timeout"));
        }
        let connect = |source| InitiatorError::Connect { address, source };
        let stream = TcpStream::connect_timeout(&address, timeout).map_err(connect)?;
        stream.set_read_timeout(Some(timeout)).map_err(connect)?;
        stream.set_write_timeout(Some(timeout)).map_err(connect)?;
        stream.set_nodelay(true).map_err(connect)?;
        Ok(Initiator {
            stream,
            timeout,
            isid: random_isid(),
            lun: Lun(0),
            digests_wanted: Digests::NONE,
            session: None,
            block_size: None,
            itt_next: 1,
            cmd_sn: 1,
            exp_stat_sn: 0,
            max_cmd_sn: 1,
            broken: false,
            frame: Vec::with_capacity(BHS_LEN + LOGIN_DATA_SEGMENT_LEN_MAX as usize),
            encoded: Vec::new(),
        })
    }

    /// Sends later commands to logical unit `lun` (the raw 8-byte LUN field; SAM's
    /// peripheral addressing puts LUN numbers below 256 in the second byte, see
    /// [`lun_from_number`]). The block size is asked again on the next read or write.
    pub fn set_lun(&mut self, lun: Lun) {
        if lun != self.lun {
            self.lun = lun;
            self.block_size = None;
        }
    }

    /// The logical unit commands go to: LUN 0 unless [`Initiator::set_lun`] said otherwise.
    pub fn lun(&self) -> Lun {
        self.lun
    }

    /// Chooses the digests the login proposes: CRC32C (with None as the fallback the target
    /// may pick) for each one set in `digests`. [`Negotiated::digests`] tells what the target
    /// agreed to. Only before [`Initiator::login`].
    pub fn set_digests(&mut self, digests: Digests) -> Result<(), InitiatorError> {
        if self.session.is_some() {
            return Err(InitiatorError::State(
                "digests are negotiated at login, which is over",
            ));
        }
        self.digests_wanted = digests;
        Ok(())
    }

    /// What the login negotiated, once logged in.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.session
    }

    /// The LUN's block size, once known (after [`Initiator::read_capacity`], [`Initiator::read`]
    /// or [`Initiator::write`]).
    pub fn block_size(&self) -> Option<u32> {
        self.block_size
    }

    /// Logs in to `target_name` as `initiator_name`, with one-way CHAP when `chap` holds a
    /// user name and secret, then negotiates the operational parameters.
    pub fn login(
        &mut self,
        initiator_name: &str,
        target_name: &str,
        chap: Option<(&str, &[u8])>,
    ) -> Result<(), InitiatorError> {
        if self.session.is_some() {
            return Err(InitiatorError::State("already logged in"));
        }
        self.usable()?;
        check_name(initiator_name)?;
        check_name(target_name)?;
        if let Some((user, _)) = chap {
            check_value(user)?;
        }
        let result = self.login_stages(initiator_name, target_name, chap);
        self.note(result)
    }

    fn login_stages(
        &mut self,
        initiator_name: &str,
        target_name: &str,
        chap: Option<(&str, &[u8])>,
    ) -> Result<(), InitiatorError> {
        let mut identity = vec![
            ("InitiatorName".to_owned(), initiator_name.to_owned()),
            ("TargetName".to_owned(), target_name.to_owned()),
            ("SessionType".to_owned(), "Normal".to_owned()),
        ];
        match chap {
            None => {
                identity.push(("AuthMethod".to_owned(), "None".to_owned()));
                let reply = self.login_step(Stage::Security, true, &identity)?;
                if !(reply.transit && reply.nsg == Stage::Operational) {
                    return Err(InitiatorError::Negotiation(
                        "the target wants authentication (no CHAP credentials given)",
                    ));
                }
            }
            Some((user, secret)) => self.chap(identity, user, &ChapSecret::new(secret))?,
        }
        self.operational()
    }

    /// The security stage with one-way CHAP (RFC 7143 section 12.1.3).
    fn chap(
        &mut self,
        mut identity: Vec<(String, String)>,
        user: &str,
        secret: &ChapSecret,
    ) -> Result<(), InitiatorError> {
        identity.push(("AuthMethod".to_owned(), "CHAP".to_owned()));
        let reply = self.login_step(Stage::Security, false, &identity)?;
        if text::get(&reply.pairs, "AuthMethod") != Some("CHAP") {
            return Err(InitiatorError::Negotiation(
                "the target did not agree to CHAP",
            ));
        }
        let algorithm = [("CHAP_A", chap::ALGORITHM_MD5)];
        let reply = self.login_step(Stage::Security, false, &algorithm)?;
        if text::get(&reply.pairs, "CHAP_A") != Some(chap::ALGORITHM_MD5) {
            return Err(InitiatorError::Negotiation(
                "the target did not agree to CHAP_A=5",
            ));
        }
        let identifier = text::get(&reply.pairs, "CHAP_I")
            .and_then(text::parse_number)
            .and_then(|number| u8::try_from(number).ok())
            .ok_or(InitiatorError::Protocol("CHAP_I missing or not in 0..=255"))?;
        let challenge = text::get(&reply.pairs, "CHAP_C")
            .and_then(text::parse_binary)
            .filter(|c| !c.is_empty() && c.len() <= chap::PEER_CHALLENGE_LEN_MAX)
            .ok_or(InitiatorError::Protocol("CHAP_C missing or unusable"))?;
        let response = chap::response(identifier, secret, &challenge);
        let answer = [
            ("CHAP_N", user.to_owned()),
            ("CHAP_R", text::hex_value(&response)),
        ];
        let reply = self.login_step(Stage::Security, true, &answer)?;
        if !(reply.transit && reply.nsg == Stage::Operational) {
            return Err(InitiatorError::Negotiation(
                "the target did not leave the security stage after CHAP",
            ));
        }
        Ok(())
    }

    /// The operational stage: propose our keys, take the target's answers, move to full
    /// feature phase.
    fn operational(&mut self) -> Result<(), InitiatorError> {
        let mrdsl = INITIATOR_MAX_RECV_DATA_SEGMENT_LEN.to_string();
        let burst = SEGMENT_LEN_MAX.to_string();
        let wanted = self.digests_wanted;
        let proposal = [
            ("HeaderDigest", digest_offer(wanted.header)),
            ("DataDigest", digest_offer(wanted.data)),
            ("MaxRecvDataSegmentLength", mrdsl.as_str()),
            ("ImmediateData", "Yes"),
            ("InitialR2T", "No"),
            ("MaxBurstLength", burst.as_str()),
            ("FirstBurstLength", burst.as_str()),
        ];
        let mut negotiated = Negotiated::default();
        let mut pairs: &[(&str, &str)] = &proposal;
        for _ in 0..LOGIN_STEPS_MAX {
            let reply = self.login_step(Stage::Operational, true, pairs)?;
            apply_answers(&reply.pairs, wanted, &mut negotiated)?;
            if reply.transit && reply.nsg == Stage::FullFeature {
                negotiated.first_burst_len =
                    negotiated.first_burst_len.min(negotiated.max_burst_len);
                negotiated.tsih = reply.tsih;
                self.session = Some(negotiated);
                return Ok(());
            }
            pairs = &[];
        }
        Err(InitiatorError::Negotiation(
            "the target never completed the operational stage",
        ))
    }

    /// Sends one Login Request from stage `csg` (towards the next stage when `transit`) and
    /// returns the response, its text gathered over Continue PDUs.
    fn login_step<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        csg: Stage,
        transit: bool,
        pairs: &[(K, V)],
    ) -> Result<LoginReply, InitiatorError> {
        let mut data = Vec::new();
        text::encode(pairs, &mut data);
        assert!(data.len() <= LOGIN_DATA_SEGMENT_LEN_MAX as usize);
        let nsg = match csg {
            Stage::Security => Stage::Operational,
            _ => Stage::FullFeature,
        };
        let itt = self.itt();
        let mut whole = Vec::new();
        for _ in 0..LOGIN_STEPS_MAX {
            // RFC 7143 (C bit): the empty request asking for more text carries no T bit.
            let request = LoginRequest {
                transit: transit && whole.is_empty(),
                cont: false,
                csg,
                nsg,
                version_max: VERSION,
                version_min: VERSION,
                isid: self.isid,
                tsih: 0,
                itt,
                cid: 0,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
                data: std::mem::take(&mut data),
            };
            self.send(&Pdu::LoginRequest(request))?;
            let Pdu::LoginResponse(response) = self.recv()? else {
                return Err(InitiatorError::Protocol("expected a Login Response"));
            };
            check_login_response(&response, itt, self.isid, csg, nsg)?;
            if whole.len() + response.data.len() > text::TEXT_LEN_MAX {
                return Err(InitiatorError::Protocol("login text too long"));
            }
            whole.extend_from_slice(&response.data);
            if response.cont {
                continue;
            }
            if response.transit && response.nsg == Stage::FullFeature {
                if response.tsih == 0 {
                    return Err(InitiatorError::Protocol("login completed with TSIH 0"));
                }
                self.cmd_sn = response.exp_cmd_sn;
                self.max_cmd_sn = response.max_cmd_sn;
            }
            return Ok(LoginReply {
                transit: response.transit,
                nsg: response.nsg,
                tsih: response.tsih,
                pairs: text::parse(&whole)?,
            });
        }
        Err(InitiatorError::Protocol("login text continues without end"))
    }

    /// READ CAPACITY (16): the number of logical blocks and the block size in bytes.
    pub fn read_capacity(&mut self) -> Result<(u64, u32), InitiatorError> {
        let mut cdb = [0u8; 16];
        cdb[0] = SERVICE_ACTION_IN_16;
        cdb[1] = SA_READ_CAPACITY_16;
        cdb[10..14].copy_from_slice(&READ_CAPACITY_16_LEN.to_be_bytes());
        let mut data = Vec::with_capacity(READ_CAPACITY_16_LEN as usize);
        self.execute(cdb, READ_CAPACITY_16_LEN, &[], &mut data)?;
        let Some((last_lba, rest)) = data.split_first_chunk::<8>() else {
            return Err(InitiatorError::Protocol(
                "READ CAPACITY (16) data too short",
            ));
        };
        let Some(block_size) = rest.first_chunk::<4>() else {
            return Err(InitiatorError::Protocol(
                "READ CAPACITY (16) data too short",
            ));
        };
        let block_size = u32::from_be_bytes(*block_size);
        if block_size == 0 || block_size > BLOCK_SIZE_MAX {
            return Err(InitiatorError::Protocol("unusable block size"));
        }
        let blocks = u64::from_be_bytes(*last_lba)
            .checked_add(1)
            .ok_or(InitiatorError::Protocol("last LBA overflows"))?;
        self.block_size = Some(block_size);
        Ok((blocks, block_size))
    }

    /// READ (16) of `blocks` blocks from `lba`.
    pub fn read(&mut self, lba: u64, blocks: u32) -> Result<Vec<u8>, InitiatorError> {
        let mut data = Vec::new();
        self.read_into(lba, blocks, &mut data)?;
        Ok(data)
    }

    /// READ (16) of `blocks` blocks from `lba` into `data` (cleared first), so that a load
    /// generator reuses one buffer instead of allocating one per command.
    pub fn read_into(
        &mut self,
        lba: u64,
        blocks: u32,
        data: &mut Vec<u8>,
    ) -> Result<(), InitiatorError> {
        data.clear();
        let block_size = self.known_block_size()?;
        let len = u64::from(blocks) * u64::from(block_size);
        let len = transfer_len(len)?;
        if len == 0 {
            return Ok(());
        }
        self.execute(rw16(READ_16, lba, blocks), len, &[], data)?;
        if data.len() != len as usize {
            return Err(InitiatorError::ShortRead {
                received: data.len() as u32,
                expected: len,
            });
        }
        Ok(())
    }

    /// WRITE (16) of `data` (a multiple of the block size) at `lba`.
    pub fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), InitiatorError> {
        let block_size = self.known_block_size()?;
        let len = transfer_len(data.len() as u64)?;
        if !len.is_multiple_of(block_size) {
            return Err(InitiatorError::Unaligned {
                len: data.len() as u64,
                block_size,
            });
        }
        if len == 0 {
            return Ok(());
        }
        self.execute(
            rw16(WRITE_16, lba, len / block_size),
            0,
            data,
            &mut Vec::new(),
        )
    }

    /// Runs any SCSI command (a CDB of at most 16 bytes) with `data_out` to send, or with up
    /// to `read_len` bytes of Data-In accepted (not both); answers the Data-In. A status
    /// other than GOOD is an error ([`InitiatorError::Status`], CHECK CONDITION with its
    /// sense). For commands this initiator has no method for: reservations, UNMAP, ...
    pub fn command(
        &mut self,
        cdb: &[u8],
        data_out: &[u8],
        read_len: u32,
    ) -> Result<Vec<u8>, InitiatorError> {
        if cdb.is_empty() || cdb.len() > 16 {
            return Err(InitiatorError::Protocol("a CDB holds 1 to 16 bytes"));
        }
        if !data_out.is_empty() && read_len > 0 {
            return Err(InitiatorError::Protocol(
                "bidirectional commands are not supported",
            ));
        }
        transfer_len(data_out.len() as u64)?;
        transfer_len(u64::from(read_len))?;
        let mut padded = [0u8; 16];
        padded[..cdb.len()].copy_from_slice(cdb);
        let mut data_in = Vec::new();
        self.execute(padded, read_len, data_out, &mut data_in)?;
        Ok(data_in)
    }

    /// Logs out (closing the session) and closes the connection.
    pub fn logout(mut self) -> Result<(), InitiatorError> {
        if self.session.is_none() || self.broken {
            let _ = self.stream.shutdown(Shutdown::Both);
            return Ok(());
        }
        let itt = self.itt();
        let request = LogoutRequest {
            immediate: true,
            reason: LogoutReason::CloseSession,
            itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.send(&Pdu::LogoutRequest(request))?;
        for _ in 0..IDLE_PDUS_MAX {
            match self.recv()? {
                Pdu::LogoutResponse(response) if response.itt == itt => {
                    let _ = self.stream.shutdown(Shutdown::Both);
                    return match response.response {
                        LogoutResponseCode::Closed => Ok(()),
                        other => Err(InitiatorError::Logout { response: other }),
                    };
                }
                other => self.idle_pdu(other)?,
            }
        }
        Err(InitiatorError::TooManyIdlePdus {
            count: IDLE_PDUS_MAX,
        })
    }

    fn known_block_size(&mut self) -> Result<u32, InitiatorError> {
        match self.block_size {
            Some(block_size) => Ok(block_size),
            None => Ok(self.read_capacity()?.1),
        }
    }

    /// Runs one SCSI command on the initiator's LUN: `data_out` is the write data (empty for
    /// reads), `read_len` the most bytes of Data-In accepted, gathered into `data_in` (empty
    /// on entry).
    fn execute(
        &mut self,
        cdb: [u8; 16],
        read_len: u32,
        data_out: &[u8],
        data_in: &mut Vec<u8>,
    ) -> Result<(), InitiatorError> {
        let Some(session) = self.session else {
            return Err(InitiatorError::State("not logged in"));
        };
        self.usable()?;
        assert!(read_len <= TRANSFER_BYTES_MAX);
        assert!(data_out.len() <= TRANSFER_BYTES_MAX as usize);
        assert!(
            read_len == 0 || data_out.is_empty(),
            "bidirectional command"
        );
        assert!(data_in.is_empty());
        let result = self.execute_on(session, cdb, read_len, data_out, data_in);
        self.note(result)
    }

    fn execute_on(
        &mut self,
        session: Negotiated,
        cdb: [u8; 16],
        read_len: u32,
        data_out: &[u8],
        data_in: &mut Vec<u8>,
    ) -> Result<(), InitiatorError> {
        if !serial_le(self.cmd_sn, self.max_cmd_sn) {
            return Err(InitiatorError::WindowClosed {
                cmd_sn: self.cmd_sn,
                max_cmd_sn: self.max_cmd_sn,
            });
        }
        let segment_len = session.target_max_recv_data_segment_len as usize;
        let write_len = data_out.len();
        let first_burst = (session.first_burst_len as usize).min(write_len);
        let immediate_len = if session.immediate_data {
            first_burst.min(segment_len)
        } else {
            0
        };
        let unsolicited_len = if session.initial_r2t {
            immediate_len
        } else {
            first_burst
        };
        let itt = self.itt();
        let command = ScsiCommand {
            fin: unsolicited_len == immediate_len,
            read: read_len > 0,
            write: write_len > 0,
            lun: self.lun,
            itt,
            expected_data_len: read_len.max(write_len as u32),
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb,
            data: data_out[..immediate_len].to_vec(),
            ..ScsiCommand::default()
        };
        self.send(&Pdu::ScsiCommand(command))?;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        let unsolicited = &data_out[immediate_len..unsolicited_len];
        self.send_data_out(itt, Ttt::RESERVED, unsolicited, immediate_len, segment_len)?;
        self.complete(session, itt, read_len, data_out, data_in)
    }

    /// Answers R2Ts and gathers Data-In into `data_in` until the command's status.
    fn complete(
        &mut self,
        session: Negotiated,
        itt: Itt,
        read_len: u32,
        data_out: &[u8],
        data_in: &mut Vec<u8>,
    ) -> Result<(), InitiatorError> {
        data_in.reserve_exact(read_len as usize);
        let mut data_sn_next = 0u32;
        let mut r2t_sn_next = 0u32;
        let mut idle = 0u32;
        loop {
            match self.recv()? {
                Pdu::R2t(r2t) => {
                    check_r2t(&r2t, itt, r2t_sn_next, session, data_out.len())?;
                    r2t_sn_next = r2t_sn_next.wrapping_add(1);
                    let start = r2t.buffer_offset as usize;
                    let end = start + r2t.desired_len as usize;
                    let segment_len = session.target_max_recv_data_segment_len as usize;
                    self.send_data_out(itt, r2t.ttt, &data_out[start..end], start, segment_len)?;
                }
                Pdu::DataIn(pdu) => {
                    let received = data_in.len() as u32;
                    let status = accept_data_in(&pdu, itt, data_sn_next, received, read_len)?;
                    if let Some(status) = status {
                        data_in.extend_from_slice(&pdu.data);
                        return status_result(status, &[]);
                    }
                    data_sn_next = data_sn_next.wrapping_add(1);
                    data_in.extend_from_slice(&pdu.data);
                }
                Pdu::ScsiResponse(response) => {
                    return scsi_response_result(&response, itt);
                }
                other => {
                    idle += 1;
                    if idle > IDLE_PDUS_MAX {
                        return Err(InitiatorError::TooManyIdlePdus { count: idle });
                    }
                    self.idle_pdu(other)?;
                }
            }
            // accept_data_in checked offsets against read_len: the buffer cannot grow past it.
            assert!(data_in.len() <= read_len as usize);
        }
    }

    /// Sends `data` (which starts at `offset` in the command's data) as one sequence of
    /// Data-Out PDUs of at most `segment_len` bytes.
    fn send_data_out(
        &mut self,
        itt: Itt,
        ttt: Ttt,
        data: &[u8],
        offset: usize,
        segment_len: usize,
    ) -> Result<(), InitiatorError> {
        assert!(segment_len > 0);
        let count = data.len().div_ceil(segment_len);
        for (index, piece) in data.chunks(segment_len).enumerate() {
            let pdu = DataOut {
                fin: index + 1 == count,
                lun: self.lun,
                itt,
                ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn: index as u32,
                buffer_offset: (offset + index * segment_len) as u32,
                data: piece.to_vec(),
            };
            self.send(&Pdu::DataOut(pdu))?;
        }
        Ok(())
    }

    /// Handles a PDU that is not an answer to what we wait for: answers pings, ignores SCSI
    /// asynchronous events, fails on everything else.
    fn idle_pdu(&mut self, pdu: Pdu) -> Result<(), InitiatorError> {
        match pdu {
            Pdu::NopIn(nop_in) => self.answer_ping(nop_in),
            Pdu::AsyncMessage(message) if message.event == 0 => Ok(()),
            Pdu::AsyncMessage(message) => Err(InitiatorError::AsyncEvent {
                event: message.event,
            }),
            Pdu::Reject(reject) => Err(InitiatorError::Rejected {
                reason: reject.reason,
            }),
            other => Err(InitiatorError::UnexpectedPdu {
                opcode: other.opcode(),
            }),
        }
    }

    /// Answers a target's ping (a NOP-In with a TTT) with a NOP-Out echoing its data.
    fn answer_ping(&mut self, nop_in: NopIn) -> Result<(), InitiatorError> {
        if nop_in.ttt == Ttt::RESERVED {
            return Ok(());
        }
        let mut data = nop_in.data;
        let segment_len = self.session.map_or(LOGIN_DATA_SEGMENT_LEN_MAX, |s| {
            s.target_max_recv_data_segment_len
        });
        data.truncate(segment_len as usize);
        let nop_out = NopOut {
            immediate: true,
            lun: nop_in.lun,
            itt: Itt::RESERVED,
            ttt: nop_in.ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data,
        };
        self.send(&Pdu::NopOut(nop_out))
    }

    fn itt(&mut self) -> Itt {
        let itt = self.itt_next;
        self.itt_next = self.itt_next.wrapping_add(1);
        if self.itt_next == Itt::RESERVED.0 {
            self.itt_next = 1;
        }
        Itt(itt)
    }

    fn usable(&self) -> Result<(), InitiatorError> {
        if self.broken {
            return Err(InitiatorError::Broken);
        }
        Ok(())
    }

    /// Marks the connection broken after a fatal error.
    fn note<T>(&mut self, result: Result<T, InitiatorError>) -> Result<T, InitiatorError> {
        if let Err(error) = &result
            && error.is_fatal()
        {
            self.broken = true;
        }
        result
    }

    /// The digests in effect: none during login (RFC 7143 section 13.1), the negotiated ones
    /// from the first PDU after it.
    fn digests(&self) -> Digests {
        self.session
            .map_or(Digests::NONE, |session| session.digests)
    }

    fn send(&mut self, pdu: &Pdu) -> Result<(), InitiatorError> {
        self.encoded.clear();
        pdu.encode(self.digests(), &mut self.encoded);
        self.stream
            .write_all(&self.encoded)
            .map_err(|error| io_error(error, self.timeout))
    }

    /// Reads one PDU, refusing data segments beyond what we declared.
    fn recv(&mut self) -> Result<Pdu, InitiatorError> {
        let max_data = match self.session {
            Some(_) => INITIATOR_MAX_RECV_DATA_SEGMENT_LEN,
            None => LOGIN_DATA_SEGMENT_LEN_MAX,
        };
        let mut bhs = [0u8; BHS_LEN];
        self.stream
            .read_exact(&mut bhs)
            .map_err(|error| io_error(error, self.timeout))?;
        let digests = self.digests();
        let len = pdu_len_within(&bhs, digests, max_data)?;
        self.frame.clear();
        self.frame.extend_from_slice(&bhs);
        self.frame.resize(len, 0);
        self.stream
            .read_exact(&mut self.frame[BHS_LEN..])
            .map_err(|error| io_error(error, self.timeout))?;
        let pdu = Pdu::decode(&self.frame, digests, max_data)?;
        self.track(&pdu);
        Ok(pdu)
    }

    /// Follows StatSN and the command window from a target PDU.
    fn track(&mut self, pdu: &Pdu) {
        let (stat_sn, window) = match pdu {
            Pdu::ScsiResponse(p) => (Some(p.stat_sn), Some((p.exp_cmd_sn, p.max_cmd_sn))),
            Pdu::DataIn(p) => (
                p.status.map(|status| status.stat_sn),
                Some((p.exp_cmd_sn, p.max_cmd_sn)),
            ),
            Pdu::NopIn(p) => (
                (p.itt != Itt::RESERVED).then_some(p.stat_sn),
                Some((p.exp_cmd_sn, p.max_cmd_sn)),
            ),
            Pdu::LogoutResponse(p) => (Some(p.stat_sn), Some((p.exp_cmd_sn, p.max_cmd_sn))),
            Pdu::Reject(p) => (Some(p.stat_sn), Some((p.exp_cmd_sn, p.max_cmd_sn))),
            Pdu::AsyncMessage(p) => (Some(p.stat_sn), Some((p.exp_cmd_sn, p.max_cmd_sn))),
            Pdu::R2t(p) => (None, Some((p.exp_cmd_sn, p.max_cmd_sn))),
            Pdu::LoginResponse(p) => (Some(p.stat_sn), None),
            _ => (None, None),
        };
        if let Some(stat_sn) = stat_sn {
            self.exp_stat_sn = stat_sn.wrapping_add(1);
        }
        // RFC 7143 (CmdSN and ExpCmdSN): a MaxCmdSN below ExpCmdSN - 1 is not a window.
        if let Some((exp_cmd_sn, max_cmd_sn)) = window
            && self.session.is_some()
            && serial_le(exp_cmd_sn.wrapping_sub(1), max_cmd_sn)
        {
            self.max_cmd_sn = max_cmd_sn;
        }
    }
}

/// Checks a Login Response's status and that it answers our request.
fn check_login_response(
    response: &LoginResponse,
    itt: Itt,
    isid: Isid,
    csg: Stage,
    nsg: Stage,
) -> Result<(), InitiatorError> {
    let status = response.status;
    if !status.is_success() {
        return Err(InitiatorError::LoginRefused {
            class: status.class,
            detail: status.detail,
            meaning: login_status_meaning(status.class, status.detail),
        });
    }
    if response.itt != itt || response.isid != isid || response.csg != csg {
        return Err(InitiatorError::Protocol("Login Response does not match"));
    }
    if response.transit && (response.cont || response.nsg != nsg) {
        return Err(InitiatorError::Protocol(
            "Login Response moves to another stage",
        ));
    }
    Ok(())
}

/// The value proposed for HeaderDigest or DataDigest: CRC32C first when wanted, with None
/// left to a target that does not do digests.
fn digest_offer(wanted: bool) -> &'static str {
    if wanted { "CRC32C,None" } else { "None" }
}

/// Whether a HeaderDigest or DataDigest answer turns the digest on; an answer we did not
/// offer is a negotiation failure.
fn digest_answer(value: &str, wanted: bool) -> Result<bool, InitiatorError> {
    match value {
        "None" => Ok(false),
        "CRC32C" if wanted => Ok(true),
        _ => Err(InitiatorError::Negotiation(
            "the target answered a digest we did not offer",
        )),
    }
}

/// Takes the target's answers to our operational keys into `negotiated`; `wanted` are the
/// digests we offered.
fn apply_answers(
    pairs: &Pairs,
    wanted: Digests,
    negotiated: &mut Negotiated,
) -> Result<(), InitiatorError> {
    for (key, value) in pairs {
        match key.as_str() {
            "HeaderDigest" => negotiated.digests.header = digest_answer(value, wanted.header)?,
            "DataDigest" => negotiated.digests.data = digest_answer(value, wanted.data)?,
            "MaxRecvDataSegmentLength" => {
                negotiated.target_max_recv_data_segment_len = segment_number(value)?;
            }
            "MaxBurstLength" => negotiated.max_burst_len = segment_number(value)?,
            "FirstBurstLength" => negotiated.first_burst_len = segment_number(value)?,
            "ImmediateData" => negotiated.immediate_data = answer_bool(value)?,
            "InitialR2T" => negotiated.initial_r2t = answer_bool(value)?,
            _ => {}
        }
    }
    Ok(())
}

/// A length key's value, within RFC 7143's 512..=2^24-1.
fn segment_number(value: &str) -> Result<u32, InitiatorError> {
    text::parse_number(value)
        .and_then(|number| u32::try_from(number).ok())
        .filter(|number| (SEGMENT_LEN_MIN..=SEGMENT_LEN_MAX).contains(number))
        .ok_or(InitiatorError::Negotiation(
            "a length key's answer is not a number in 512..=16777215",
        ))
}

fn answer_bool(value: &str) -> Result<bool, InitiatorError> {
    text::parse_bool(value).ok_or(InitiatorError::Negotiation(
        "a boolean key's answer is not Yes or No",
    ))
}

/// Checks an R2T against the command it claims to be for.
fn check_r2t(
    r2t: &R2t,
    itt: Itt,
    r2t_sn: u32,
    session: Negotiated,
    write_len: usize,
) -> Result<(), InitiatorError> {
    if r2t.itt != itt {
        return Err(InitiatorError::Protocol("R2T for another task"));
    }
    if r2t.r2t_sn != r2t_sn {
        return Err(InitiatorError::Protocol("R2TSN out of order"));
    }
    if r2t.desired_len == 0 || r2t.desired_len > session.max_burst_len {
        return Err(InitiatorError::Protocol(
            "R2T desired length is 0 or beyond MaxBurstLength",
        ));
    }
    let end = u64::from(r2t.buffer_offset) + u64::from(r2t.desired_len);
    if end > write_len as u64 {
        return Err(InitiatorError::Protocol("R2T beyond the write's data"));
    }
    Ok(())
}

/// Checks a Data-In PDU; returns its status when it carries one.
fn accept_data_in(
    pdu: &DataIn,
    itt: Itt,
    data_sn: u32,
    received: u32,
    read_len: u32,
) -> Result<Option<u8>, InitiatorError> {
    if pdu.itt != itt {
        return Err(InitiatorError::Protocol("Data-In for another task"));
    }
    if pdu.data_sn != data_sn {
        return Err(InitiatorError::Protocol("DataSN out of order"));
    }
    // DataPDUInOrder=Yes (the default we keep): each PDU continues where the last ended.
    if pdu.buffer_offset != received {
        return Err(InitiatorError::Protocol("Data-In out of order"));
    }
    let len = pdu.data.len() as u32;
    if u64::from(pdu.buffer_offset) + u64::from(len) > u64::from(read_len) {
        return Err(InitiatorError::DataInOverrun {
            offset: pdu.buffer_offset,
            len,
            expected: read_len,
        });
    }
    Ok(pdu.status.map(|status| status.status))
}

/// The outcome of a SCSI Response.
fn scsi_response_result(response: &ScsiResponse, itt: Itt) -> Result<(), InitiatorError> {
    if response.itt != itt {
        return Err(InitiatorError::Protocol("SCSI Response for another task"));
    }
    if response.response != ScsiResponse::COMMAND_COMPLETED {
        return Err(InitiatorError::TargetFailure {
            response: response.response,
        });
    }
    status_result(response.status, &response.sense)
}

fn status_result(status: u8, sense: &[u8]) -> Result<(), InitiatorError> {
    match status {
        STATUS_GOOD => Ok(()),
        STATUS_CHECK_CONDITION => {
            let (sense_key, asc, ascq) = parse_sense(sense);
            Err(InitiatorError::CheckCondition {
                sense_key,
                asc,
                ascq,
            })
        }
        status => Err(InitiatorError::Status { status }),
    }
}

/// Sense key, ASC and ASCQ from fixed (0x70/0x71) or descriptor (0x72/0x73) sense data;
/// zeros for what is absent.
pub fn parse_sense(sense: &[u8]) -> (u8, u8, u8) {
    let at = |index: usize| sense.get(index).copied().unwrap_or(0);
    match at(0) & 0x7f {
        0x70 | 0x71 => (at(2) & 0x0f, at(12), at(13)),
        0x72 | 0x73 => (at(1) & 0x0f, at(2), at(3)),
        _ => (0, 0, 0),
    }
}

/// The LUN field for LUN `number` below 256: SAM-5 peripheral device addressing, bus 0, the
/// number in the second byte (what tgt, LIO and this crate's target expect).
pub fn lun_from_number(number: u8) -> Lun {
    Lun(u64::from(number) << 48)
}

/// A READ (16) or WRITE (16) CDB.
fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = opcode;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

fn transfer_len(len: u64) -> Result<u32, InitiatorError> {
    if len > u64::from(TRANSFER_BYTES_MAX) {
        return Err(InitiatorError::TransferTooLong {
            len,
            max: TRANSFER_BYTES_MAX,
        });
    }
    Ok(len as u32)
}

fn check_name(name: &str) -> Result<(), InitiatorError> {
    if name.is_empty() || name.len() > NAME_LEN_MAX {
        return Err(InitiatorError::InvalidArgument(
            "iSCSI names are 1 to 223 bytes",
        ));
    }
    check_value(name)
}

fn check_value(value: &str) -> Result<(), InitiatorError> {
    if value.len() > text::VALUE_LEN_MAX || value.contains('\0') {
        return Err(InitiatorError::InvalidArgument(
            "text values are at most 255 bytes, without NUL",
        ));
    }
    Ok(())
}

/// `a <= b` in 32-bit serial number arithmetic (RFC 1982).
fn serial_le(a: u32, b: u32) -> bool {
    a == b || (b.wrapping_sub(a) as i32) > 0
}

fn io_error(error: io::Error, timeout: Duration) -> InitiatorError {
    match error.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => InitiatorError::Closed,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => InitiatorError::TimedOut { timeout },
        _ => InitiatorError::Io(error),
    }
}

/// An ISID of the "random" type (RFC 7143 section 11.12.5, T = 0b10), so that sessions of
/// one initiator name do not reinstate each other.
fn random_isid() -> Isid {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let bits = hasher.finish().to_be_bytes();
    Isid([
        0x80 | (bits[0] & 0x3f),
        bits[1],
        bits[2],
        bits[3],
        bits[4],
        bits[5],
    ])
}

/// What a Login Response status means (RFC 7143, Login Response Status-Class and -Detail).
fn login_status_meaning(class: u8, detail: u8) -> &'static str {
    match (class, detail) {
        (0x01, _) => "target moved (redirection is not supported)",
        (0x02, 0x01) => "authentication failure",
        (0x02, 0x02) => "authorization failure",
        (0x02, 0x03) => "target not found",
        (0x02, 0x04) => "target removed",
        (0x02, 0x05) => "unsupported version",
        (0x02, 0x06) => "too many connections",
        (0x02, 0x07) => "missing parameter",
        (0x02, 0x08) => "can't include in session",
        (0x02, 0x09) => "session type not supported",
        (0x02, 0x0a) => "session does not exist",
        (0x02, 0x0b) => "invalid during login",
        (0x02, _) => "initiator error",
        (0x03, 0x01) => "service unavailable",
        (0x03, 0x02) => "out of resources",
        (0x03, _) => "target error",
        _ => "unknown status",
    }
}
