//! PDUs a target sends (RFC 7143 sections 11.4, 11.6-11.11, 11.13, 11.15, 11.17-11.19).

use super::{
    BhsWriter, DataParts, Encoded, Frame, Isid, Itt, LoginStatus, Lun, PduError, Stage, Ttt,
    initiator::flag, opcode,
};

/// Byte 1 bit 7: F (final), or a bit RFC 7143 fixes at 1.
const FLAG_FINAL: u8 = 0x80;
/// Byte 1 bit 6 of Text and Login PDUs: C (continue).
const FLAG_CONTINUE: u8 = 0x40;

/// NOP-In (0x20): the answer to a NOP-Out, or a target's own ping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NopIn {
    /// LUN (with a ping that wants an answer on a LUN).
    pub lun: Lun,
    /// ITT of the NOP-Out answered, or [`Itt::RESERVED`] for a target ping.
    pub itt: Itt,
    /// TTT the initiator must echo, or [`Ttt::RESERVED`] when no answer is wanted.
    pub ttt: Ttt,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Ping data (the NOP-Out's, when answering).
    pub data: Vec<u8>,
}

impl NopIn {
    pub(super) fn decode(f: &Frame<'_>) -> Result<NopIn, PduError> {
        f.expect_no_ahs()?;
        Ok(NopIn {
            lun: f.lun(),
            itt: f.itt(),
            ttt: Ttt(f.u32_at(20)),
            stat_sn: f.u32_at(24),
            exp_cmd_sn: f.u32_at(28),
            max_cmd_sn: f.u32_at(32),
            data: f.data.to_vec(),
        })
    }

    pub(super) fn encode(&self) -> Encoded<'_> {
        let mut bhs = BhsWriter::new(opcode::NOP_IN, false, FLAG_FINAL);
        bhs.lun(self.lun);
        bhs.itt(self.itt);
        bhs.u32_at(20, self.ttt.0);
        bhs.u32_at(24, self.stat_sn);
        bhs.u32_at(28, self.exp_cmd_sn);
        bhs.u32_at(32, self.max_cmd_sn);
        Encoded {
            bhs,
            ahs: Vec::new(),
            data: DataParts::one(&self.data),
        }
    }
}

/// A residual count and its direction (the O and U bits; both set is invalid).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Residual {
    /// Exactly the expected length moved; the count field is reserved.
    #[default]
    None,
    /// U: this many expected bytes were not transferred.
    Underflow(u32),
    /// O: this many bytes could not be transferred for lack of expected length.
    Overflow(u32),
}

impl Residual {
    fn decode(
        f: &Frame<'_>,
        overflow: bool,
        underflow: bool,
        count: u32,
    ) -> Result<Residual, PduError> {
        match (overflow, underflow) {
            (false, false) => Ok(Residual::None),
            (true, false) => Ok(Residual::Overflow(count)),
            (false, true) => Ok(Residual::Underflow(count)),
            (true, true) => Err(f.invalid("O and U both set")),
        }
    }

    /// (overflow bit set, underflow bit set, count field).
    fn bits(self) -> (bool, bool, u32) {
        match self {
            Residual::None => (false, false, 0),
            Residual::Underflow(count) => (false, true, count),
            Residual::Overflow(count) => (true, false, count),
        }
    }
}

/// Splits a SenseLength-prefixed data segment (SCSI Response, Asynchronous Message).
fn split_sense<'a>(f: &Frame<'a>) -> Result<(&'a [u8], &'a [u8]), PduError> {
    if f.data.is_empty() {
        return Ok((&[], &[]));
    }
    let Some((length, rest)) = f.data.split_first_chunk::<2>() else {
        return Err(f.invalid("SenseLength"));
    };
    let length = usize::from(u16::from_be_bytes(*length));
    if length > rest.len() {
        return Err(f.invalid("SenseLength"));
    }
    Ok(rest.split_at(length))
}

/// The SenseLength prefix, or none when there is neither sense nor other data.
fn sense_parts<'a>(sense: &'a [u8], rest: &'a [u8]) -> DataParts<'a> {
    if sense.is_empty() && rest.is_empty() {
        return DataParts::none();
    }
    let length = u16::try_from(sense.len()).expect("sense data longer than 64 KiB");
    DataParts {
        prefix: Some(length.to_be_bytes()),
        first: sense,
        second: rest,
    }
}

/// SCSI Response (0x21).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScsiResponse {
    /// o/u bits and the Bidirectional Read Residual Count.
    pub bidi_read_residual: Residual,
    /// O/U bits and the Residual Count.
    pub residual: Residual,
    /// Response: 0x00 command completed at target, 0x01 target failure.
    pub response: u8,
    /// SCSI status (valid when `response` is 0x00).
    pub status: u8,
    /// Initiator task tag of the command.
    pub itt: Itt,
    /// SNACK Tag (0 unless answering an R-Data SNACK).
    pub snack_tag: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// ExpDataSN: Data-In PDUs sent for the command (0 for writes).
    pub exp_data_sn: u32,
    /// Sense data (sent after its 2-byte SenseLength).
    pub sense: Vec<u8>,
    /// Response data following the sense data.
    pub response_data: Vec<u8>,
}

impl ScsiResponse {
    /// Response code 0x00: command completed at target (status is valid).
    pub const COMMAND_COMPLETED: u8 = 0x00;
    /// Response code 0x01: target failure.
    pub const TARGET_FAILURE: u8 = 0x01;

    pub(super) fn decode(f: &Frame<'_>) -> Result<ScsiResponse, PduError> {
        f.expect_no_ahs()?;
        let flags = f.flags();
        let bidi_read_residual =
            Residual::decode(f, flags & 0x10 != 0, flags & 0x08 != 0, f.u32_at(40))?;
        let residual = Residual::decode(f, flags & 0x04 != 0, flags & 0x02 != 0, f.u32_at(44))?;
        let (sense, response_data) = split_sense(f)?;
        Ok(ScsiResponse {
            bidi_read_residual,
            residual,
            response: f.bhs[2],
            status: f.bhs[3],
            itt: f.itt(),
            snack_tag: f.u32_at(20),
            stat_sn: f.u32_at(24),
            exp_cmd_sn: f.u32_at(28),
            max_cmd_sn: f.u32_at(32),
            exp_data_sn: f.u32_at(36),
            sense: sense.to_vec(),
            response_data: response_data.to_vec(),
        })
    }

    pub(super) fn encode(&self) -> Encoded<'_> {
        let (bidi_over, bidi_under, bidi_count) = self.bidi_read_residual.bits();
        let (over, under, count) = self.residual.bits();
        let flags = FLAG_FINAL
            | flag(bidi_over, 0x10)
            | flag(bidi_under, 0x08)
            | flag(over, 0x04)
            | flag(under, 0x02);
        let mut bhs = BhsWriter::new(opcode::SCSI_RESPONSE, false, flags);
        bhs.u8_at(2, self.response);
        bhs.u8_at(3, self.status);
        bhs.itt(self.itt);
        bhs.u32_at(20, self.snack_tag);
        bhs.u32_at(24, self.stat_sn);
        bhs.u32_at(28, self.exp_cmd_sn);
        bhs.u32_at(32, self.max_cmd_sn);
        bhs.u32_at(36, self.exp_data_sn);
        bhs.u32_at(40, bidi_count);
        bhs.u32_at(44, count);
        Encoded {
            bhs,
            ahs: Vec::new(),
            data: sense_parts(&self.sense, &self.response_data),
        }
    }
}

/// Task management function response code (RFC 7143, Task Management Function Response).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskMgmtResponseCode {
    /// 0: function complete.
    FunctionComplete,
    /// 1: task does not exist.
    TaskDoesNotExist,
    /// 2: LUN does not exist.
    LunDoesNotExist,
    /// 3: task still allegiant.
    TaskStillAllegiant,
    /// 4: task allegiance reassignment not supported.
    ReassignmentNotSupported,
    /// 5: task management function not supported.
    FunctionNotSupported,
    /// 6: function authorization failed.
    AuthorizationFailed,
    /// 255: function rejected.
    Rejected,
}

/// Task Management Function Response (0x22).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskMgmtResponse {
    /// Response.
    pub response: TaskMgmtResponseCode,
    /// ITT of the request.
    pub itt: Itt,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
}

impl TaskMgmtResponse {
    pub(super) fn decode(f: &Frame<'_>) -> Result<TaskMgmtResponse, PduError> {
        f.expect_no_ahs()?;
        f.expect_no_data()?;
        let response = match f.bhs[2] {
            0 => TaskMgmtResponseCode::FunctionComplete,
            1 => TaskMgmtResponseCode::TaskDoesNotExist,
            2 => TaskMgmtResponseCode::LunDoesNotExist,
            3 => TaskMgmtResponseCode::TaskStillAllegiant,
            4 => TaskMgmtResponseCode::ReassignmentNotSupported,
            5 => TaskMgmtResponseCode::FunctionNotSupported,
            6 => TaskMgmtResponseCode::AuthorizationFailed,
            255 => TaskMgmtResponseCode::Rejected,
            _ => return Err(f.invalid("Response")),
        };
        Ok(TaskMgmtResponse {
            response,
            itt: f.itt(),
            stat_sn: f.u32_at(24),
            exp_cmd_sn: f.u32_at(28),
            max_cmd_sn: f.u32_at(32),
        })
    }

    pub(super) fn encode(&self) -> Encoded<'_> {
        let response = match self.response {
            TaskMgmtResponseCode::FunctionComplete => 0,
            TaskMgmtResponseCode::TaskDoesNotExist => 1,
            TaskMgmtResponseCode::LunDoesNotExist => 2,
            TaskMgmtResponseCode::TaskStillAllegiant => 3,
            TaskMgmtResponseCode::ReassignmentNotSupported => 4,
            TaskMgmtResponseCode::FunctionNotSupported => 5,
            TaskMgmtResponseCode::AuthorizationFailed => 6,
            TaskMgmtResponseCode::Rejected => 255,
        };
        let mut bhs = BhsWriter::new(opcode::TASK_MGMT_RESPONSE, false, FLAG_FINAL);
        bhs.u8_at(2, response);
        bhs.itt(self.itt);
        bhs.u32_at(24, self.stat_sn);
        bhs.u32_at(28, self.exp_cmd_sn);
        bhs.u32_at(32, self.max_cmd_sn);
        Encoded {
            bhs,
            ahs: Vec::new(),
            data: DataParts::none(),
        }
    }
}

/// Login Response (0x23).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginResponse {
    /// T bit: the target agrees to move to `nsg`.
    pub transit: bool,
    /// C bit: the text continues in the next Login Response.
    pub cont: bool,
    /// Current stage.
    pub csg: Stage,
    /// Next stage (meaningful only with `transit`).
    pub nsg: Stage,
    /// Version-max.
    pub version_max: u8,
    /// Version-active.
    pub version_active: u8,
    /// ISID, echoed from the request.
    pub isid: Isid,
    /// TSIH: the new session's handle in the final response, else 0 or the request's.
    pub tsih: u16,
    /// ITT, echoed from the request.
    pub itt: Itt,
    /// StatSN (the first response sets the connection's initial StatSN).
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Status-Class and Status-Detail.
    pub status: LoginStatus,
    /// Text key=value pairs.
    pub data: Vec<u8>,
}

impl LoginResponse {
    pub(super) fn decode(f: &Frame<'_>) -> Result<LoginResponse, PduError> {
        f.expect_no_ahs()?;
        let flags = f.flags();
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&f.bhs[8..14]);
        Ok(LoginResponse {
            transit: flags & FLAG_FINAL != 0,
            cont: flags & FLAG_CONTINUE != 0,
            csg: Stage::from_bits(flags >> 2),
            nsg: Stage::from_bits(flags),
            version_max: f.bhs[2],
            version_active: f.bhs[3],
            isid: Isid(isid),
            tsih: f.u16_at(14),
            itt: f.itt(),
            stat_sn: f.u32_at(24),
            exp_cmd_sn: f.u32_at(28),
            max_cmd_sn: f.u32_at(32),
            status: LoginStatus {
                class: f.bhs[36],
                detail: f.bhs[37],
            },
            data: f.data.to_vec(),
        })
    }

    pub(super) fn encode(&self) -> Encoded<'_> {
        let flags = flag(self.transit, FLAG_FINAL)
            | flag(self.cont, FLAG_CONTINUE)
            | self.csg.bits() << 2
            | self.nsg.bits();
        let mut bhs = BhsWriter::new(opcode::LOGIN_RESPONSE, false, flags);
        bhs.u8_at(2, self.version_max);
        bhs.u8_at(3, self.version_active);
        bhs.bhs[8..14].copy_from_slice(&self.isid.0);
        bhs.u16_at(14, self.tsih);
        bhs.itt(self.itt);
        bhs.u32_at(24, self.stat_sn);
        bhs.u32_at(28, self.exp_cmd_sn);
        bhs.u32_at(32, self.max_cmd_sn);
        bhs.u8_at(36, self.status.class);
        bhs.u8_at(37, self.status.detail);
        Encoded {
            bhs,
            ahs: Vec::new(),
            data: DataParts::one(&self.data),
        }
    }
}

/// Text Response (0x24).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextResponse {
    /// F bit: the last response of this exchange.
    pub fin: bool,
    /// C bit: the text continues in the next Text Response.
    pub cont: bool,
    /// LUN (reserved unless a key needs it).
    pub lun: Lun,
    /// ITT of the request.
    pub itt: Itt,
    /// TTT: the target's tag while the exchange goes on, [`Ttt::RESERVED`] at its end.
    pub ttt: Ttt,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Text key=value pairs.
    pub data: Vec<u8>,
}

impl TextResponse {
    pub(super) fn decode(f: &Frame<'_>) -> Result<TextResponse, PduError> {
        f.expect_no_ahs()?;
        let flags = f.flags();
        Ok(TextResponse {
            fin: flags & FLAG_FINAL != 0,
            cont: flags & FLAG_CONTINUE != 0,
            lun: f.lun(),
            itt: f.itt(),
            ttt: Ttt(f.u32_at(20)),
            stat_sn: f.u32_at(24),
            exp_cmd_sn: f.u32_at(28),
            max_cmd_sn: f.u32_at(32),
            data: f.data.to_vec(),
        })
    }

    pub(super) fn encode(&self) -> Encoded<'_> {
        let flags = flag(self.fin, FLAG_FINAL) | flag(self.cont, FLAG_CONTINUE);
        let mut bhs = BhsWriter::new(opcode::TEXT_RESPONSE, false, flags);
        bhs.lun(self.lun);
        bhs.itt(self.itt);
        bhs.u32_at(20, self.ttt.0);
        bhs.u32_at(24, self.stat_sn);
        bhs.u32_at(28, self.exp_cmd_sn);
        bhs.u32_at(32, self.max_cmd_sn);
        Encoded {
            bhs,
            ahs: Vec::new(),
            data: DataParts::one(&self.data),
        }
    }
}

/// Status carried by the last Data-In of a read (the S bit "phase collapse").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DataInStatus {
    /// SCSI status.
    pub status: u8,
    /// StatSN.
    pub stat_sn: u32,
    /// O/U bits and the Residual Count.
    pub residual: Residual,
}

/// SCSI Data-In (0x25).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataIn {
    /// F bit: the last PDU of the sequence (always set when `status` is present).
    pub fin: bool,
    /// A bit: the initiator must acknowledge with a DataACK SNACK (ErrorRecoveryLevel > 0).
    pub ack: bool,
    /// LUN (with the A bit).
    pub lun: Lun,
    /// ITT of the command.
    pub itt: Itt,
    /// TTT (with the A bit), else [`Ttt::RESERVED`].
    pub ttt: Ttt,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// DataSN.
    pub data_sn: u32,
    /// Buffer Offset of `data` within the command's data.
    pub buffer_offset: u32,
    /// S bit: the command's status rides on this PDU (no SCSI Response follows).
    pub status: Option<DataInStatus>,
    /// The data.
    pub data: Vec<u8>,
}

impl DataIn {
    pub(super) fn decode(f: &Frame<'_>) -> Result<DataIn, PduError> {
        f.expect_no_ahs()?;
        let flags = f.flags();
        let fin = flags & FLAG_FINAL != 0;
        let has_status = flags & 0x01 != 0;
        let residual = Residual::decode(f, flags & 0x04 != 0, flags & 0x02 != 0, f.u32_at(44))?;
        let status = if has_status {
            // RFC 7143 (SCSI Data-In): S may only be set together with F.
            if !fin {
                return Err(f.invalid("S without F"));
            }
            Some(DataInStatus {
                status: f.bhs[3],
                stat_sn: f.u32_at(24),
                residual,
            })
        } else {
            // O and U are meaningful only with S.
            if residual != Residual::None {
                return Err(f.invalid("O/U without S"));
            }
            None
        };
        Ok(DataIn {
            fin,
            ack: flags & 0x40 != 0,
            lun: f.lun(),
            itt: f.itt(),
            ttt: Ttt(f.u32_at(20)),
            exp_cmd_sn: f.u32_at(28),
            max_cmd_sn: f.u32_at(32),
            data_sn: f.u32_at(36),
            buffer_offset: f.u32_at(40),
            status,
            data: f.data.to_vec(),
        })
    }

    pub(super) fn encode(&self) -> Encoded<'_> {
        assert!(
            self.status.is_none() || self.fin,
            "Data-In with status must be final"
        );
        let status = self.status.unwrap_or_default();
        let (over, under, count) = status.residual.bits();
        let flags = flag(self.fin, FLAG_FINAL)
            | flag(self.ack, 0x40)
            | flag(over, 0x04)
            | flag(under, 0x02)
            | flag(self.status.is_some(), 0x01);
        let mut bhs = BhsWriter::new(opcode::DATA_IN, false, flags);
        bhs.u8_at(3, status.status);
        bhs.lun(self.lun);
        bhs.itt(self.itt);
        bhs.u32_at(20, self.ttt.0);
        bhs.u32_at(24, status.stat_sn);
        bhs.u32_at(28, self.exp_cmd_sn);
        bhs.u32_at(32, self.max_cmd_sn);
        bhs.u32_at(36, self.data_sn);
        bhs.u32_at(40, self.buffer_offset);
        bhs.u32_at(44, count);
        Encoded {
            bhs,
            ahs: Vec::new(),
            data: DataParts::one(&self.data),
        }
    }
}

/// Logout response code (RFC 7143, Logout Response).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogoutResponseCode {
    /// 0: connection or session closed successfully.
    Closed,
    /// 1: CID not found.
    CidNotFound,
    /// 2: connection recovery is not supported.
    RecoveryNotSupported,
    /// 3: cleanup failed for various reasons.
    CleanupFailed,
}

/// Logout Response (0x26). Not in the original brief's list; the target needs it to answer a
/// Logout Request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutResponse {
    /// Response.
    pub response: LogoutResponseCode,
    /// ITT of the request.
    pub itt: Itt,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Time2Wait, seconds.
    pub time2wait: u16,
    /// Time2Retain, seconds.
    pub time2retain: u16,
}

impl LogoutResponse {
    pub(super) fn decode(f: &Frame<'_>) -> Result<LogoutResponse, PduError> {
        f.expect_no_ahs()?;
        f.expect_no_data()?;
        let response = match f.bhs[2] {
            0 => LogoutResponseCode::Closed,
            1 => LogoutResponseCode::CidNotFound,
            2 => LogoutResponseCode::RecoveryNotSupported,
            3 => LogoutResponseCode::CleanupFailed,
            _ => return Err(f.invalid("Response")),
        };
        Ok(LogoutResponse {
            response,
            itt: f.itt(),
            stat_sn: f.u32_at(24),
            exp_cmd_sn: f.u32_at(28),
            max_cmd_sn: f.u32_at(32),
            time2wait: f.u16_at(40),
            time2retain: f.u16_at(42),
        })
    }

    pub(super) fn encode(&self) -> Encoded<'_> {
        let response = match self.response {
            LogoutResponseCode::Closed => 0,
            LogoutResponseCode::CidNotFound => 1,
            LogoutResponseCode::RecoveryNotSupported => 2,
            LogoutResponseCode::CleanupFailed => 3,
        };
        let mut bhs = BhsWriter::new(opcode::LOGOUT_RESPONSE, false, FLAG_FINAL);
        bhs.u8_at(2, response);
        bhs.itt(self.itt);
        bhs.u32_at(24, self.stat_sn);
        bhs.u32_at(28, self.exp_cmd_sn);
        bhs.u32_at(32, self.max_cmd_sn);
        bhs.u16_at(40, self.time2wait);
        bhs.u16_at(42, self.time2retain);
        Encoded {
            bhs,
            ahs: Vec::new(),
            data: DataParts::none(),
        }
    }
}

/// Ready To Transfer (0x31): the target asks for a range of a write's data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct R2t {
    /// LUN of the command.
    pub lun: Lun,
    /// ITT of the command.
    pub itt: Itt,
    /// TTT the Data-Out PDUs must carry.
    pub ttt: Ttt,
    /// StatSN (the next StatSN; R2T does not advance it).
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// R2TSN.
    pub r2t_sn: u32,
    /// Buffer Offset of the requested range.
    pub buffer_offset: u32,
    /// Desired Data Transfer Length of the requested range.
    pub desired_len: u32,
}

impl R2t {
    pub(super) fn decode(f: &Frame<'_>) -> Result<R2t, PduError> {
        f.expect_no_ahs()?;
        f.expect_no_data()?;
        Ok(R2t {
            lun: f.lun(),
            itt: f.itt(),
            ttt: Ttt(f.u32_at(20)),
            stat_sn: f.u32_at(24),
            exp_cmd_sn: f.u32_at(28),
            max_cmd_sn: f.u32_at(32),
            r2t_sn: f.u32_at(36),
            buffer_offset: f.u32_at(40),
            desired_len: f.u32_at(44),
        })
    }

    pub(super) fn encode(&self) -> Encoded<'_> {
        let mut bhs = BhsWriter::new(opcode::R2T, false, FLAG_FINAL);
        bhs.lun(self.lun);
        bhs.itt(self.itt);
        bhs.u32_at(20, self.ttt.0);
        bhs.u32_at(24, self.stat_sn);
        bhs.u32_at(28, self.exp_cmd_sn);
        bhs.u32_at(32, self.max_cmd_sn);
        bhs.u32_at(36, self.r2t_sn);
        bhs.u32_at(40, self.buffer_offset);
        bhs.u32_at(44, self.desired_len);
        Encoded {
            bhs,
            ahs: Vec::new(),
            data: DataParts::none(),
        }
    }
}

/// Asynchronous Message (0x32). The ITT field is always [`Itt::RESERVED`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AsyncMessage {
    /// LUN (for SCSI asynchronous events).
    pub lun: Lun,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// AsyncEvent (RFC 7143, Asynchronous Message): 0 SCSI event, 1 logout request, 2 connection
    /// drop, 3 session drop, 4 negotiation request, 5 task termination, 255 vendor-specific.
    pub event: u8,
    /// AsyncVCode (vendor code, with event 255).
    pub vcode: u8,
    /// Parameter1 (event-specific).
    pub parameter1: u16,
    /// Parameter2 (event-specific).
    pub parameter2: u16,
    /// Parameter3 (event-specific).
    pub parameter3: u16,
    /// Sense data (sent after its 2-byte SenseLength).
    pub sense: Vec<u8>,
    /// iSCSI event data following the sense data.
    pub event_data: Vec<u8>,
}

impl AsyncMessage {
    pub(super) fn decode(f: &Frame<'_>) -> Result<AsyncMessage, PduError> {
        f.expect_no_ahs()?;
        let (sense, event_data) = split_sense(f)?;
        Ok(AsyncMessage {
            lun: f.lun(),
            stat_sn: f.u32_at(24),
            exp_cmd_sn: f.u32_at(28),
            max_cmd_sn: f.u32_at(32),
            event: f.bhs[36],
            vcode: f.bhs[37],
            parameter1: f.u16_at(38),
            parameter2: f.u16_at(40),
            parameter3: f.u16_at(42),
            sense: sense.to_vec(),
            event_data: event_data.to_vec(),
        })
    }

    pub(super) fn encode(&self) -> Encoded<'_> {
        let mut bhs = BhsWriter::new(opcode::ASYNC_MESSAGE, false, FLAG_FINAL);
        bhs.lun(self.lun);
        bhs.itt(Itt::RESERVED);
        bhs.u32_at(24, self.stat_sn);
        bhs.u32_at(28, self.exp_cmd_sn);
        bhs.u32_at(32, self.max_cmd_sn);
        bhs.u8_at(36, self.event);
        bhs.u8_at(37, self.vcode);
        bhs.u16_at(38, self.parameter1);
        bhs.u16_at(40, self.parameter2);
        bhs.u16_at(42, self.parameter3);
        Encoded {
            bhs,
            ahs: Vec::new(),
            data: sense_parts(&self.sense, &self.event_data),
        }
    }
}

/// Reject (0x3f). The ITT field is always [`Itt::RESERVED`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reject {
    /// Reason, see [`super::reject_reason`].
    pub reason: u8,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// DataSN/R2TSN (for a rejected Data/R2T SNACK), else 0.
    pub data_sn: u32,
    /// The complete header (BHS and AHS) of the rejected PDU.
    pub header: Vec<u8>,
}

impl Reject {
    pub(super) fn decode(f: &Frame<'_>) -> Result<Reject, PduError> {
        f.expect_no_ahs()?;
        Ok(Reject {
            reason: f.bhs[2],
            stat_sn: f.u32_at(24),
            exp_cmd_sn: f.u32_at(28),
            max_cmd_sn: f.u32_at(32),
            data_sn: f.u32_at(36),
            header: f.data.to_vec(),
        })
    }

    pub(super) fn encode(&self) -> Encoded<'_> {
        let mut bhs = BhsWriter::new(opcode::REJECT, false, FLAG_FINAL);
        bhs.u8_at(2, self.reason);
        bhs.itt(Itt::RESERVED);
        bhs.u32_at(24, self.stat_sn);
        bhs.u32_at(28, self.exp_cmd_sn);
        bhs.u32_at(32, self.max_cmd_sn);
        bhs.u32_at(36, self.data_sn);
        Encoded {
            bhs,
            ahs: Vec::new(),
            data: DataParts::one(&self.header),
        }
    }
}
