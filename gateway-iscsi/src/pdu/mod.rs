//! Sans-IO iSCSI PDU codec (RFC 7143 section 11).
//!
//! A PDU on the wire is a 48-byte basic header segment (BHS), optional additional header
//! segments (AHS, in 4-byte words), an optional CRC-32C header digest, the data segment padded
//! to 4 bytes, and an optional CRC-32C data digest (present only when the data segment is not
//! empty). A server reading a TCP stream reads [`BHS_LEN`] bytes, asks [`pdu_len_within`] how
//! long the whole PDU is (refusing lengths beyond what it declared), reads the rest, and hands
//! the frame to [`Pdu::decode`].
//!
//! Errors tell the caller what to do ([`PduError`]): either answer with a Reject PDU carrying
//! the offending header and keep the connection, or drop the connection because framing or
//! header integrity is lost. During login errors are answered with a Login Response status, not a Reject, so
//! the login path treats every decode error as fatal.
//!
//! Reserved fields are written as zero and ignored when read; padding bytes likewise. Fields
//! that RFC 7143 marks "reserved" unless a flag is set (residual counts, status of Data-In) are
//! typed as `Option`s or enums so an encoded PDU cannot carry a meaningless value.

mod initiator;
mod target;
#[cfg(test)]
mod tests;

use cairn_common::checksum::crc32c;
pub use initiator::{
    DataOut, LoginRequest, LogoutReason, LogoutRequest, NopOut, ScsiCommand, SnackRequest,
    SnackType, TaskAttr, TaskMgmtFunction, TaskMgmtRequest, TextRequest,
};
pub use target::{
    AsyncMessage, DataIn, DataInStatus, LoginResponse, LogoutResponse, LogoutResponseCode, NopIn,
    R2t, Reject, Residual, ScsiResponse, TaskMgmtResponse, TaskMgmtResponseCode, TextResponse,
};

/// Length of the basic header segment that starts every PDU.
pub const BHS_LEN: usize = 48;

/// Length of a CRC-32C digest on the wire.
pub const DIGEST_LEN: usize = 4;

/// Largest additional header segment: TotalAHSLength is one byte counting 4-byte words.
pub const MAX_AHS_LEN: usize = 255 * 4;

/// Largest data segment the codec accepts: DataSegmentLength is a 24-bit field, and RFC 7143
/// (MaxRecvDataSegmentLength key) caps MaxRecvDataSegmentLength at 2^24 - 1. Receivers pass their own, smaller
/// declared limit to [`pdu_len_within`] and [`Pdu::decode`].
pub const MAX_DATA_SEGMENT_LEN: u32 = (1 << 24) - 1;

/// Largest PDU the codec can produce or accept, with both digests on.
pub const MAX_PDU_LEN: usize =
    BHS_LEN + MAX_AHS_LEN + DIGEST_LEN + padded_len(MAX_DATA_SEGMENT_LEN as usize) + DIGEST_LEN;

/// Length of the CDB carried in the BHS; longer CDBs continue in an extended-CDB AHS.
pub const CDB_LEN: usize = 16;

/// Longest extended-CDB tail that still leaves room for the 8-byte bidirectional read-length
/// AHS inside [`MAX_AHS_LEN`] (the extended-CDB AHS has a 4-byte header).
pub const MAX_EXTENDED_CDB_LEN: usize = MAX_AHS_LEN - 8 - 4;

const _: () = assert!(MAX_AHS_LEN.is_multiple_of(4));
const _: () = assert!(MAX_DATA_SEGMENT_LEN < (1 << 24));
const _: () = assert!(padded_len(MAX_EXTENDED_CDB_LEN + 4) + 8 <= MAX_AHS_LEN);

/// Opcodes (RFC 7143 section 11), the low six bits of byte 0.
pub mod opcode {
    /// NOP-Out (initiator).
    pub const NOP_OUT: u8 = 0x00;
    /// SCSI Command (initiator).
    pub const SCSI_COMMAND: u8 = 0x01;
    /// SCSI Task Management Function Request (initiator).
    pub const TASK_MGMT_REQUEST: u8 = 0x02;
    /// Login Request (initiator).
    pub const LOGIN_REQUEST: u8 = 0x03;
    /// Text Request (initiator).
    pub const TEXT_REQUEST: u8 = 0x04;
    /// SCSI Data-Out (initiator).
    pub const DATA_OUT: u8 = 0x05;
    /// Logout Request (initiator).
    pub const LOGOUT_REQUEST: u8 = 0x06;
    /// SNACK Request (initiator).
    pub const SNACK_REQUEST: u8 = 0x10;
    /// NOP-In (target).
    pub const NOP_IN: u8 = 0x20;
    /// SCSI Response (target).
    pub const SCSI_RESPONSE: u8 = 0x21;
    /// SCSI Task Management Function Response (target).
    pub const TASK_MGMT_RESPONSE: u8 = 0x22;
    /// Login Response (target).
    pub const LOGIN_RESPONSE: u8 = 0x23;
    /// Text Response (target).
    pub const TEXT_RESPONSE: u8 = 0x24;
    /// SCSI Data-In (target).
    pub const DATA_IN: u8 = 0x25;
    /// Logout Response (target).
    pub const LOGOUT_RESPONSE: u8 = 0x26;
    /// Ready To Transfer (target).
    pub const R2T: u8 = 0x31;
    /// Asynchronous Message (target).
    pub const ASYNC_MESSAGE: u8 = 0x32;
    /// Reject (target).
    pub const REJECT: u8 = 0x3f;
}

/// Reject reason codes (RFC 7143, Reject PDU).
pub mod reject_reason {
    /// Data (payload) digest error; the initiator may resend.
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    /// SNACK Reject.
    pub const SNACK_REJECT: u8 = 0x03;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u8 = 0x04;
    /// Command not supported (also used for unknown opcodes).
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    /// Immediate command reject: too many immediate commands.
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    /// Task in progress.
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    /// Invalid data ack.
    pub const INVALID_DATA_ACK: u8 = 0x08;
    /// Invalid PDU field.
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    /// Long operation reject: cannot generate a target transfer tag (out of resources).
    pub const LONG_OP_REJECT: u8 = 0x0a;
    /// Waiting for Logout.
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// Which CRC-32C digests are in effect on a connection (negotiated at login; never during it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Digests {
    /// HeaderDigest=CRC32C: a digest follows the BHS and AHS.
    pub header: bool,
    /// DataDigest=CRC32C: a digest follows every non-empty data segment.
    pub data: bool,
}

impl Digests {
    /// No digests: the state of every connection during login.
    pub const NONE: Digests = Digests {
        header: false,
        data: false,
    };
    /// Both digests on.
    pub const BOTH: Digests = Digests {
        header: true,
        data: true,
    };
}

/// Logical unit number: the raw 8-byte field (SAM addressing is the SCSI layer's business).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lun(pub u64);

/// Initiator task tag: the initiator's name for a task, echoed in every related target PDU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Itt(pub u32);

impl Itt {
    /// The reserved value 0xffffffff: "no task" (unsolicited NOP-In, Async, Reject).
    pub const RESERVED: Itt = Itt(0xffff_ffff);
}

/// Target transfer tag: the target's name for a transfer (R2T, Data-In with A bit, NOP-In).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ttt(pub u32);

impl Ttt {
    /// The reserved value 0xffffffff: no transfer tag.
    pub const RESERVED: Ttt = Ttt(0xffff_ffff);
}

/// Initiator session ID (6 bytes: type, naming authority, qualifier), part of the session key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Isid(pub [u8; 6]);

/// Login stage carried in CSG/NSG (RFC 7143, Login Request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// 0: security negotiation.
    Security,
    /// 1: login operational negotiation.
    Operational,
    /// 2: reserved; decoded so the login layer can answer it with an initiator error.
    Reserved,
    /// 3: full feature phase.
    FullFeature,
}

impl Stage {
    fn from_bits(bits: u8) -> Stage {
        match bits & 0x03 {
            0 => Stage::Security,
            1 => Stage::Operational,
            2 => Stage::Reserved,
            _ => Stage::FullFeature,
        }
    }

    fn bits(self) -> u8 {
        match self {
            Stage::Security => 0,
            Stage::Operational => 1,
            Stage::Reserved => 2,
            Stage::FullFeature => 3,
        }
    }
}

/// Login status class and detail (RFC 7143, Login Response).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LoginStatus {
    /// Status-Class: 0 success, 1 redirection, 2 initiator error, 3 target error.
    pub class: u8,
    /// Status-Detail within the class.
    pub detail: u8,
}

impl LoginStatus {
    /// 0x0000: login is proceeding fine.
    pub const SUCCESS: LoginStatus = LoginStatus {
        class: 0,
        detail: 0,
    };
    /// 0x0200: miscellaneous initiator error (a protocol violation).
    pub const INITIATOR_ERROR: LoginStatus = LoginStatus {
        class: 2,
        detail: 0,
    };
    /// 0x0201: the initiator could not be authenticated.
    pub const AUTHENTICATION_FAILURE: LoginStatus = LoginStatus {
        class: 2,
        detail: 1,
    };
    /// 0x0202: the initiator is not allowed to access the target.
    pub const AUTHORIZATION_FAILURE: LoginStatus = LoginStatus {
        class: 2,
        detail: 2,
    };
    /// 0x0203: the requested target does not exist.
    pub const NOT_FOUND: LoginStatus = LoginStatus {
        class: 2,
        detail: 3,
    };
    /// 0x0204: the target has been removed.
    pub const TARGET_REMOVED: LoginStatus = LoginStatus {
        class: 2,
        detail: 4,
    };
    /// 0x0205: no version in [min, max] is supported.
    pub const UNSUPPORTED_VERSION: LoginStatus = LoginStatus {
        class: 2,
        detail: 5,
    };
    /// 0x0206: too many connections on this session.
    pub const TOO_MANY_CONNECTIONS: LoginStatus = LoginStatus {
        class: 2,
        detail: 6,
    };
    /// 0x0207: a required key is missing.
    pub const MISSING_PARAMETER: LoginStatus = LoginStatus {
        class: 2,
        detail: 7,
    };
    /// 0x0208: the connection cannot be included in the session.
    pub const CANT_INCLUDE_IN_SESSION: LoginStatus = LoginStatus {
        class: 2,
        detail: 8,
    };
    /// 0x0209: the session type is not supported.
    pub const SESSION_TYPE_NOT_SUPPORTED: LoginStatus = LoginStatus {
        class: 2,
        detail: 9,
    };
    /// 0x020a: the session named by a non-zero TSIH does not exist.
    pub const SESSION_DOES_NOT_EXIST: LoginStatus = LoginStatus {
        class: 2,
        detail: 0x0a,
    };
    /// 0x020b: the request is invalid during login.
    pub const INVALID_DURING_LOGIN: LoginStatus = LoginStatus {
        class: 2,
        detail: 0x0b,
    };
    /// 0x0300: target hardware or software error.
    pub const TARGET_ERROR: LoginStatus = LoginStatus {
        class: 3,
        detail: 0,
    };
    /// 0x0301: the service is unavailable.
    pub const SERVICE_UNAVAILABLE: LoginStatus = LoginStatus {
        class: 3,
        detail: 1,
    };
    /// 0x0302: the target is out of resources.
    pub const OUT_OF_RESOURCES: LoginStatus = LoginStatus {
        class: 3,
        detail: 2,
    };

    /// The status as the 16-bit value RFC 7143 tables use (class in the high byte).
    pub fn as_u16(self) -> u16 {
        u16::from(self.class) << 8 | u16::from(self.detail)
    }

    /// Whether this is the success status.
    pub fn is_success(self) -> bool {
        self.class == 0 && self.detail == 0
    }
}

/// What a receiver must do about a PDU it could not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    /// Answer with a Reject PDU (`reason`, the offending `header` as its data) and discard the
    /// PDU; the connection stays up. (During login, drop the connection instead.)
    #[error("reject the PDU, reason {reason:#04x}: {why}")]
    Reject {
        /// Reject reason code, see [`reject_reason`].
        reason: u8,
        /// The basic header segment of the offending PDU, returned to the initiator.
        header: [u8; BHS_LEN],
        /// What was wrong, for logs.
        why: RejectWhy,
    },
    /// Drop the connection: framing or header integrity is lost.
    #[error("drop the connection: {0}")]
    Disconnect(DisconnectWhy),
}

/// Why a PDU is rejected (the connection survives).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RejectWhy {
    /// The data digest does not match the data segment (RFC 7143, digest errors).
    #[error("data digest {received:#010x} does not match computed {computed:#010x}")]
    DataDigest {
        /// Digest found on the wire.
        received: u32,
        /// Digest computed over the data segment and its padding.
        computed: u32,
    },
    /// The opcode is not one RFC 7143 defines (vendor-specific opcodes included).
    #[error("opcode {opcode:#04x} is not supported")]
    UnsupportedOpcode {
        /// The six-bit opcode found in byte 0.
        opcode: u8,
    },
    /// A field holds a value RFC 7143 does not allow for this opcode.
    #[error("opcode {opcode:#04x}: invalid {field}")]
    InvalidField {
        /// The six-bit opcode.
        opcode: u8,
        /// Which field, named as in RFC 7143.
        field: &'static str,
    },
}

/// Why the connection must be dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DisconnectWhy {
    /// The frame is shorter than a basic header segment.
    #[error("frame of {len} bytes is shorter than the 48-byte BHS")]
    Truncated {
        /// Bytes in the frame.
        len: usize,
    },
    /// The frame length disagrees with the lengths in its own header.
    #[error("frame of {frame_len} bytes, but its header describes {expected} bytes")]
    LengthMismatch {
        /// Bytes in the frame.
        frame_len: usize,
        /// Bytes the header's AHS and data segment lengths add up to.
        expected: usize,
    },
    /// DataSegmentLength exceeds what this receiver declared (MaxRecvDataSegmentLength): the
    /// peer broke the negotiation, and reading the segment would cost memory we never offered.
    #[error("data segment of {len} bytes exceeds our limit of {max}")]
    DataSegmentTooLong {
        /// DataSegmentLength from the header.
        len: u32,
        /// The receiver's limit.
        max: u32,
    },
    /// The header digest does not match: no field of the header can be trusted, including the
    /// lengths that frame the next PDU (RFC 7143, digest errors).
    #[error("header digest {received:#010x} does not match computed {computed:#010x}")]
    HeaderDigest {
        /// Digest found on the wire.
        received: u32,
        /// Digest computed over the BHS and AHS.
        computed: u32,
    },
}

/// A decoded PDU, one variant per opcode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pdu {
    /// 0x00 NOP-Out.
    NopOut(NopOut),
    /// 0x01 SCSI Command.
    ScsiCommand(ScsiCommand),
    /// 0x02 Task Management Function Request.
    TaskMgmtRequest(TaskMgmtRequest),
    /// 0x03 Login Request.
    LoginRequest(LoginRequest),
    /// 0x04 Text Request.
    TextRequest(TextRequest),
    /// 0x05 SCSI Data-Out.
    DataOut(DataOut),
    /// 0x06 Logout Request.
    LogoutRequest(LogoutRequest),
    /// 0x10 SNACK Request.
    SnackRequest(SnackRequest),
    /// 0x20 NOP-In.
    NopIn(NopIn),
    /// 0x21 SCSI Response.
    ScsiResponse(ScsiResponse),
    /// 0x22 Task Management Function Response.
    TaskMgmtResponse(TaskMgmtResponse),
    /// 0x23 Login Response.
    LoginResponse(LoginResponse),
    /// 0x24 Text Response.
    TextResponse(TextResponse),
    /// 0x25 SCSI Data-In.
    DataIn(DataIn),
    /// 0x26 Logout Response.
    LogoutResponse(LogoutResponse),
    /// 0x31 Ready To Transfer.
    R2t(R2t),
    /// 0x32 Asynchronous Message.
    AsyncMessage(AsyncMessage),
    /// 0x3f Reject.
    Reject(Reject),
}

/// Total length of the PDU whose basic header segment is `bhs`, accepting data segments up to
/// [`MAX_DATA_SEGMENT_LEN`]. Receivers should prefer [`pdu_len_within`] with their declared
/// MaxRecvDataSegmentLength so a lying peer cannot make them read 16 MiB.
pub fn pdu_len(bhs: &[u8; BHS_LEN], digests: Digests) -> Result<usize, PduError> {
    pdu_len_within(bhs, digests, MAX_DATA_SEGMENT_LEN)
}

/// Total length of the PDU whose basic header segment is `bhs`: BHS, AHS, header digest, data
/// segment with padding, data digest. Fails with [`DisconnectWhy::DataSegmentTooLong`] when
/// DataSegmentLength exceeds `max_data` (this receiver's declared MaxRecvDataSegmentLength).
pub fn pdu_len_within(
    bhs: &[u8; BHS_LEN],
    digests: Digests,
    max_data: u32,
) -> Result<usize, PduError> {
    let ahs_len = ahs_len(bhs);
    let data_len = data_segment_len(bhs);
    if data_len > max_data.min(MAX_DATA_SEGMENT_LEN) {
        return Err(PduError::Disconnect(DisconnectWhy::DataSegmentTooLong {
            len: data_len,
            max: max_data.min(MAX_DATA_SEGMENT_LEN),
        }));
    }
    let len = frame_len(ahs_len, data_len as usize, digests);
    assert!(len >= BHS_LEN);
    assert!(len <= MAX_PDU_LEN);
    Ok(len)
}

/// TotalAHSLength in bytes.
fn ahs_len(bhs: &[u8; BHS_LEN]) -> usize {
    usize::from(bhs[4]) * 4
}

/// DataSegmentLength: 24 bits, big-endian, bytes 5..8.
fn data_segment_len(bhs: &[u8; BHS_LEN]) -> u32 {
    u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]])
}

const fn padded_len(len: usize) -> usize {
    len.div_ceil(4) * 4
}

fn frame_len(ahs_len: usize, data_len: usize, digests: Digests) -> usize {
    let header_digest = if digests.header { DIGEST_LEN } else { 0 };
    // RFC 7143 section 11: no data digest follows an empty data segment.
    let data_digest = if digests.data && data_len > 0 {
        DIGEST_LEN
    } else {
        0
    };
    BHS_LEN + ahs_len + header_digest + padded_len(data_len) + data_digest
}

/// The parts of a received frame that per-opcode decoders read.
struct Frame<'a> {
    bhs: &'a [u8; BHS_LEN],
    ahs: &'a [u8],
    data: &'a [u8],
}

impl Frame<'_> {
    fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }

    fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }

    fn flags(&self) -> u8 {
        self.bhs[1]
    }

    fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.bhs[at], self.bhs[at + 1]])
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes([
            self.bhs[at],
            self.bhs[at + 1],
            self.bhs[at + 2],
            self.bhs[at + 3],
        ])
    }

    fn lun(&self) -> Lun {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&self.bhs[8..16]);
        Lun(u64::from_be_bytes(raw))
    }

    fn itt(&self) -> Itt {
        Itt(self.u32_at(16))
    }

    fn invalid(&self, field: &'static str) -> PduError {
        PduError::Reject {
            reason: reject_reason::INVALID_PDU_FIELD,
            header: *self.bhs,
            why: RejectWhy::InvalidField {
                opcode: self.opcode(),
                field,
            },
        }
    }

    /// Opcodes other than SCSI Command carry no AHS (RFC 7143 defines AHS
    /// types only for commands); one present would be silently lost on re-encode.
    fn expect_no_ahs(&self) -> Result<(), PduError> {
        if self.ahs.is_empty() {
            Ok(())
        } else {
            Err(self.invalid("TotalAHSLength"))
        }
    }

    /// PDUs whose data segment RFC 7143 requires to be empty.
    fn expect_no_data(&self) -> Result<(), PduError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(self.invalid("DataSegmentLength"))
        }
    }
}

/// A BHS being written by a per-opcode encoder.
struct BhsWriter {
    bhs: [u8; BHS_LEN],
}

impl BhsWriter {
    fn new(opcode: u8, immediate: bool, flags: u8) -> BhsWriter {
        assert!(opcode <= 0x3f);
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = opcode | if immediate { 0x40 } else { 0 };
        bhs[1] = flags;
        BhsWriter { bhs }
    }

    fn u8_at(&mut self, at: usize, value: u8) {
        self.bhs[at] = value;
    }

    fn u16_at(&mut self, at: usize, value: u16) {
        self.bhs[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }

    fn u32_at(&mut self, at: usize, value: u32) {
        self.bhs[at..at + 4].copy_from_slice(&value.to_be_bytes());
    }

    fn lun(&mut self, lun: Lun) {
        self.bhs[8..16].copy_from_slice(&lun.0.to_be_bytes());
    }

    fn itt(&mut self, itt: Itt) {
        self.u32_at(16, itt.0);
    }
}

/// The data segment of a PDU being encoded, in up to three pieces so SCSI Response and
/// Asynchronous Message can prefix the SenseLength without building a temporary buffer.
struct DataParts<'a> {
    prefix: Option<[u8; 2]>,
    first: &'a [u8],
    second: &'a [u8],
}

impl<'a> DataParts<'a> {
    fn none() -> DataParts<'a> {
        DataParts {
            prefix: None,
            first: &[],
            second: &[],
        }
    }

    fn one(data: &'a [u8]) -> DataParts<'a> {
        DataParts {
            prefix: None,
            first: data,
            second: &[],
        }
    }

    fn len(&self) -> usize {
        self.prefix.map_or(0, |p| p.len()) + self.first.len() + self.second.len()
    }
}

/// An encoded BHS, its AHS and its data, before digests and padding are added.
struct Encoded<'a> {
    bhs: BhsWriter,
    ahs: Vec<u8>,
    data: DataParts<'a>,
}

impl Pdu {
    /// Decodes one complete frame (exactly [`pdu_len_within`] bytes), verifying the digests
    /// that are in effect. `max_data` is this receiver's declared MaxRecvDataSegmentLength.
    ///
    /// Allocates at most the data segment (≤ `max_data`) and an extended CDB (≤
    /// [`MAX_AHS_LEN`]), both copied from `frame`.
    pub fn decode(frame: &[u8], digests: Digests, max_data: u32) -> Result<Pdu, PduError> {
        let Some(bhs) = frame.first_chunk::<BHS_LEN>() else {
            return Err(PduError::Disconnect(DisconnectWhy::Truncated {
                len: frame.len(),
            }));
        };
        let expected = pdu_len_within(bhs, digests, max_data)?;
        if frame.len() != expected {
            return Err(PduError::Disconnect(DisconnectWhy::LengthMismatch {
                frame_len: frame.len(),
                expected,
            }));
        }
        let header_end = BHS_LEN + ahs_len(bhs);
        let mut at = header_end;
        if digests.header {
            let received = digest_at(frame, at);
            let computed = crc32c(&frame[..header_end]);
            if received != computed {
                return Err(PduError::Disconnect(DisconnectWhy::HeaderDigest {
                    received,
                    computed,
                }));
            }
            at += DIGEST_LEN;
        }
        let data_len = data_segment_len(bhs) as usize;
        let data_end = at + padded_len(data_len);
        if digests.data && data_len > 0 {
            // The digest covers the padding too (RFC 7143 section 11).
            let received = digest_at(frame, data_end);
            let computed = crc32c(&frame[at..data_end]);
            if received != computed {
                return Err(PduError::Reject {
                    reason: reject_reason::DATA_DIGEST_ERROR,
                    header: *bhs,
                    why: RejectWhy::DataDigest { received, computed },
                });
            }
        }
        let parsed = Frame {
            bhs,
            ahs: &frame[BHS_LEN..header_end],
            data: &frame[at..at + data_len],
        };
        let pdu = match parsed.opcode() {
            opcode::NOP_OUT => Pdu::NopOut(NopOut::decode(&parsed)?),
            opcode::SCSI_COMMAND => Pdu::ScsiCommand(ScsiCommand::decode(&parsed)?),
            opcode::TASK_MGMT_REQUEST => Pdu::TaskMgmtRequest(TaskMgmtRequest::decode(&parsed)?),
            opcode::LOGIN_REQUEST => Pdu::LoginRequest(LoginRequest::decode(&parsed)?),
            opcode::TEXT_REQUEST => Pdu::TextRequest(TextRequest::decode(&parsed)?),
            opcode::DATA_OUT => Pdu::DataOut(DataOut::decode(&parsed)?),
            opcode::LOGOUT_REQUEST => Pdu::LogoutRequest(LogoutRequest::decode(&parsed)?),
            opcode::SNACK_REQUEST => Pdu::SnackRequest(SnackRequest::decode(&parsed)?),
            opcode::NOP_IN => Pdu::NopIn(NopIn::decode(&parsed)?),
            opcode::SCSI_RESPONSE => Pdu::ScsiResponse(ScsiResponse::decode(&parsed)?),
            opcode::TASK_MGMT_RESPONSE => Pdu::TaskMgmtResponse(TaskMgmtResponse::decode(&parsed)?),
            opcode::LOGIN_RESPONSE => Pdu::LoginResponse(LoginResponse::decode(&parsed)?),
            opcode::TEXT_RESPONSE => Pdu::TextResponse(TextResponse::decode(&parsed)?),
            opcode::DATA_IN => Pdu::DataIn(DataIn::decode(&parsed)?),
            opcode::LOGOUT_RESPONSE => Pdu::LogoutResponse(LogoutResponse::decode(&parsed)?),
            opcode::R2T => Pdu::R2t(R2t::decode(&parsed)?),
            opcode::ASYNC_MESSAGE => Pdu::AsyncMessage(AsyncMessage::decode(&parsed)?),
            opcode::REJECT => Pdu::Reject(Reject::decode(&parsed)?),
            other => {
                return Err(PduError::Reject {
                    reason: reject_reason::COMMAND_NOT_SUPPORTED,
                    header: *bhs,
                    why: RejectWhy::UnsupportedOpcode { opcode: other },
                });
            }
        };
        assert_eq!(pdu.opcode(), parsed.opcode());
        Ok(pdu)
    }

    /// Appends the wire form of this PDU to `out`, with the digests in effect.
    ///
    /// Panics if a field exceeds what the wire can carry (data segment beyond
    /// [`MAX_DATA_SEGMENT_LEN`], extended CDB beyond [`MAX_EXTENDED_CDB_LEN`]): building such a
    /// PDU is a programmer error, not a peer's.
    pub fn encode(&self, digests: Digests, out: &mut Vec<u8>) {
        let Encoded { mut bhs, ahs, data } = self.encode_parts();
        assert_eq!(bhs.bhs[0] & 0x3f, self.opcode());
        assert!(ahs.len().is_multiple_of(4));
        assert!(ahs.len() <= MAX_AHS_LEN, "AHS of {} bytes", ahs.len());
        let data_len = data.len();
        assert!(
            data_len <= MAX_DATA_SEGMENT_LEN as usize,
            "data segment of {data_len} bytes"
        );
        bhs.u8_at(
            4,
            u8::try_from(ahs.len() / 4).expect("invariant: AHS length checked"),
        );
        let data_len_bytes = u32::try_from(data_len).expect("invariant: data length checked");
        bhs.bhs[5..8].copy_from_slice(&data_len_bytes.to_be_bytes()[1..]);

        let total = frame_len(ahs.len(), data_len, digests);
        out.reserve(total);
        let start = out.len();
        out.extend_from_slice(&bhs.bhs);
        out.extend_from_slice(&ahs);
        if digests.header {
            let digest = crc32c(&out[start..]);
            out.extend_from_slice(&digest.to_le_bytes());
        }
        let data_start = out.len();
        if let Some(prefix) = data.prefix {
            out.extend_from_slice(&prefix);
        }
        out.extend_from_slice(data.first);
        out.extend_from_slice(data.second);
        out.resize(data_start + padded_len(data_len), 0);
        if digests.data && data_len > 0 {
            let digest = crc32c(&out[data_start..]);
            out.extend_from_slice(&digest.to_le_bytes());
        }
        assert_eq!(out.len() - start, total);
    }

    /// The opcode of this PDU.
    pub fn opcode(&self) -> u8 {
        match self {
            Pdu::NopOut(_) => opcode::NOP_OUT,
            Pdu::ScsiCommand(_) => opcode::SCSI_COMMAND,
            Pdu::TaskMgmtRequest(_) => opcode::TASK_MGMT_REQUEST,
            Pdu::LoginRequest(_) => opcode::LOGIN_REQUEST,
            Pdu::TextRequest(_) => opcode::TEXT_REQUEST,
            Pdu::DataOut(_) => opcode::DATA_OUT,
            Pdu::LogoutRequest(_) => opcode::LOGOUT_REQUEST,
            Pdu::SnackRequest(_) => opcode::SNACK_REQUEST,
            Pdu::NopIn(_) => opcode::NOP_IN,
            Pdu::ScsiResponse(_) => opcode::SCSI_RESPONSE,
            Pdu::TaskMgmtResponse(_) => opcode::TASK_MGMT_RESPONSE,
            Pdu::LoginResponse(_) => opcode::LOGIN_RESPONSE,
            Pdu::TextResponse(_) => opcode::TEXT_RESPONSE,
            Pdu::DataIn(_) => opcode::DATA_IN,
            Pdu::LogoutResponse(_) => opcode::LOGOUT_RESPONSE,
            Pdu::R2t(_) => opcode::R2T,
            Pdu::AsyncMessage(_) => opcode::ASYNC_MESSAGE,
            Pdu::Reject(_) => opcode::REJECT,
        }
    }

    /// The encoded length of this PDU with the given digests (what [`Pdu::encode`] appends).
    pub fn encoded_len(&self, digests: Digests) -> usize {
        let Encoded { ahs, data, .. } = self.encode_parts();
        frame_len(ahs.len(), data.len(), digests)
    }

    fn encode_parts(&self) -> Encoded<'_> {
        match self {
            Pdu::NopOut(p) => p.encode(),
            Pdu::ScsiCommand(p) => p.encode(),
            Pdu::TaskMgmtRequest(p) => p.encode(),
            Pdu::LoginRequest(p) => p.encode(),
            Pdu::TextRequest(p) => p.encode(),
            Pdu::DataOut(p) => p.encode(),
            Pdu::LogoutRequest(p) => p.encode(),
            Pdu::SnackRequest(p) => p.encode(),
            Pdu::NopIn(p) => p.encode(),
            Pdu::ScsiResponse(p) => p.encode(),
            Pdu::TaskMgmtResponse(p) => p.encode(),
            Pdu::LoginResponse(p) => p.encode(),
            Pdu::TextResponse(p) => p.encode(),
            Pdu::DataIn(p) => p.encode(),
            Pdu::LogoutResponse(p) => p.encode(),
            Pdu::R2t(p) => p.encode(),
            Pdu::AsyncMessage(p) => p.encode(),
            Pdu::Reject(p) => p.encode(),
        }
    }
}

/// Reads a little-endian CRC-32C at `at`. RFC 3720 appendix B.4 shows the digest of 32 zero
/// bytes (0x8a9136aa) on the wire as `aa 36 91 8a`: least significant byte first.
fn digest_at(frame: &[u8], at: usize) -> u32 {
    let bytes = &frame[at..at + DIGEST_LEN];
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}
