//! PDUs an initiator sends (RFC 7143 sections 11.2-11.16 and 11.18-11.19).

use super::{
    BHS_LEN, BhsWriter, CDB_LEN, DataParts, Encoded, Frame, Isid, Itt, Lun, MAX_EXTENDED_CDB_LEN,
    PduError, Stage, Ttt, data_segment_len, opcode, padded_len,
};

/// Byte 1 bit 7 of most PDUs: F (final), or a bit RFC 7143 fixes at 1.
const FLAG_FINAL: u8 = 0x80;
/// Byte 1 bit 6 of Text and Login PDUs: C (continue).
const FLAG_CONTINUE: u8 = 0x40;
/// AHS type 1: extended CDB (RFC 7143, SCSI Command).
const AHS_TYPE_EXTENDED_CDB: u8 = 1;
/// AHS type 2: bidirectional read expected data transfer length (RFC 7143, SCSI Command).
const AHS_TYPE_BIDI_READ_LEN: u8 = 2;
/// AHSLength of the bidirectional read-length AHS: a reserved byte and a 4-byte length.
const AHS_BIDI_READ_LEN_LENGTH: u16 = 5;

/// NOP-Out (0x00): a ping from the initiator, or the answer to a target's NOP-In.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NopOut {
    /// I bit: immediate delivery.
    pub immediate: bool,
    /// LUN, meaningful only when answering a NOP-In that carried one.
    pub lun: Lun,
    /// Initiator task tag; [`Itt::RESERVED`] when answering a NOP-In.
    pub itt: Itt,
    /// Target transfer tag copied from the NOP-In this answers, else [`Ttt::RESERVED`].
    pub ttt: Ttt,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// Ping data, echoed by the target.
    pub data: Vec<u8>,
}

impl NopOut {
    pub(super) fn decode(f: &Frame<'_>) -> Result<NopOut, PduError> {
        f.expect_no_ahs()?;
        Ok(NopOut {
            immediate: f.immediate(),
            lun: f.lun(),
            itt: f.itt(),
            ttt: Ttt(f.u32_at(20)),
            cmd_sn: f.u32_at(24),
            exp_stat_sn: f.u32_at(28),
            data: f.data.to_vec(),
        })
    }

    pub(super) fn encode(&self) -> Encoded<'_> {
        let mut bhs = BhsWriter::new(opcode::NOP_OUT, self.immediate, FLAG_FINAL);
        bhs.lun(self.lun);
        bhs.itt(self.itt);
        bhs.u32_at(20, self.ttt.0);
        bhs.u32_at(24, self.cmd_sn);
        bhs.u32_at(28, self.exp_stat_sn);
        Encoded {
            bhs,
            ahs: Vec::new(),
            data: DataParts::one(&self.data),
        }
    }
}

/// SCSI task attribute (RFC 7143 SCSI Command ATTR, SAM).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TaskAttr {
    /// 0: untagged.
    Untagged,
    /// 1: simple.
    #[default]
    Simple,
    /// 2: ordered.
    Ordered,
    /// 3: head of queue.
    HeadOfQueue,
    /// 4: ACA.
    Aca,
}

impl TaskAttr {
    pub(super) fn from_bits(bits: u8) -> Option<TaskAttr> {
        match bits {
            0 => Some(TaskAttr::Untagged),
            1 => Some(TaskAttr::Simple),
            2 => Some(TaskAttr::Ordered),
            3 => Some(TaskAttr::HeadOfQueue),
            4 => Some(TaskAttr::Aca),
            _ => None,
        }
    }

    fn bits(self) -> u8 {
        match self {
            TaskAttr::Untagged => 0,
            TaskAttr::Simple => 1,
            TaskAttr::Ordered => 2,
            TaskAttr::HeadOfQueue => 3,
            TaskAttr::Aca => 4,
        }
    }
}

/// SCSI Command (0x01).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScsiCommand {
    /// I bit: immediate delivery.
    pub immediate: bool,
    /// F bit: no unsolicited Data-Out PDUs follow (the immediate data, if any, is all).
    pub fin: bool,
    /// R bit: data flows from target to initiator.
    pub read: bool,
    /// W bit: data flows from initiator to target.
    pub write: bool,
    /// Task attribute.
    pub attr: TaskAttr,
    /// Logical unit.
    pub lun: Lun,
    /// Initiator task tag.
    pub itt: Itt,
    /// Expected Data Transfer Length: bytes the initiator expects to move (write length for a
    /// bidirectional command).
    pub expected_data_len: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// The first 16 bytes of the CDB (zero-padded when the CDB is shorter).
    pub cdb: [u8; CDB_LEN],
    /// CDB bytes beyond the first 16 (extended-CDB AHS); empty for CDBs of 16 bytes or less.
    pub extended_cdb: Vec<u8>,
    /// Bidirectional Read Expected Data Transfer Length AHS, for bidirectional commands.
    pub bidi_read_len: Option<u32>,
    /// Immediate (unsolicited) data.
    pub data: Vec<u8>,
}

impl ScsiCommand {
    pub(super) fn decode(f: &Frame<'_>) -> Result<ScsiCommand, PduError> {
        let flags = f.flags();
        let attr = TaskAttr::from_bits(flags & 0x07).ok_or_else(|| f.invalid("ATTR"))?;
        let mut cdb = [0u8; CDB_LEN];
        cdb.copy_from_slice(&f.bhs[32..48]);
        let mut extended_cdb = None;
        let mut bidi_read_len = None;
        let mut ahs = f.ahs;
        while !ahs.is_empty() {
            // Each AHS: AHSLength (2 bytes, excluding itself, the type and padding), AHSType,
            // then AHSLength type-specific bytes, padded to 4.
            if ahs.len() < 4 {
                return Err(f.invalid("AHS"));
            }
            let length = usize::from(u16::from_be_bytes([ahs[0], ahs[1]]));
            let kind = ahs[2];
            let total = padded_len(3 + length);
            if total > ahs.len() {
                return Err(f.invalid("AHSLength"));
            }
            let specific = &ahs[3..3 + length];
            match kind {
                // Byte 3 is reserved; the CDB tail follows. An empty tail has no meaning.
                AHS_TYPE_EXTENDED_CDB if extended_cdb.is_none() && length >= 2 => {
                    extended_cdb = Some(specific[1..].to_vec());
                }
                AHS_TYPE_BIDI_READ_LEN
                    if bidi_read_len.is_none()
                        && length == usize::from(AHS_BIDI_READ_LEN_LENGTH) =>
                {
                    bidi_read_len = Some(u32::from_be_bytes([
                        specific[1],
                        specific[2],
                        specific[3],
                        specific[4],
                    ]));
                }
                _ => return Err(f.invalid("AHSType")),
            }
            ahs = &ahs[total..];
        }
        Ok(ScsiCommand {
            immediate: f.immediate(),
            fin: flags & FLAG_FINAL != 0,
            read: flags & 0x40 != 0,
            write: flags & 0x20 != 0,
            attr,
            lun: f.lun(),
            itt: f.itt(),
            expected_data_len: f.u32_at(20),
            cmd_sn: f.u32_at(24),
            exp_stat_sn: f.u32_at(28),
            cdb,
            extended_cdb: extended_cdb.unwrap_or_default(),
            bidi_read_len,
            data: f.data.to_vec(),
        })
    }

    pub(super) fn encode(&self) -> Encoded<'_> {
        assert!(
            self.extended_cdb.len() <= MAX_EXTENDED_CDB_LEN,
            "extended CDB of {} bytes",
            self.extended_cdb.len()
        );
        let flags = flag(self.fin, FLAG_FINAL)
            | flag(self.read, 0x40)
            | flag(self.write, 0x20)
            | self.attr.bits();
        let mut bhs = BhsWriter::new(opcode::SCSI_COMMAND, self.immediate, flags);
        bhs.lun(self.lun);
        bhs.itt(self.itt);
        bhs.u32_at(20, self.expected_data_len);
        bhs.u32_at(24, self.cmd_sn);
        bhs.u32_at(28, self.exp_stat_sn);
        bhs.bhs[32..48].copy_from_slice(&self.cdb);
        let mut ahs = Vec::new();
        if !self.extended_cdb.is_empty() {
            let length = u16::try_from(self.extended_cdb.len() + 1)
                .expect("invariant: extended CDB length asserted above");
            ahs.extend_from_slice(&length.to_be_bytes());
            ahs.push(AHS_TYPE_EXTENDED_CDB);
            ahs.push(0);
            ahs.extend_from_slice(&self.extended_cdb);
            ahs.resize(padded_len(ahs.len()), 0);
        }
        if let Some(len) = self.bidi_read_len {
            ahs.extend_from_slice(&AHS_BIDI_READ_LEN_LENGTH.to_be_bytes());
            ahs.push(AHS_TYPE_BIDI_READ_LEN);
            ahs.push(0);
            ahs.extend_from_slice(&len.to_be_bytes());
        }
        Encoded {
            bhs,
            ahs,
            data: DataParts::one(&self.data),
        }
    }

    /// The whole CDB: the 16 bytes of the BHS followed by the extended-CDB tail.
    pub fn full_cdb(&self) -> Vec<u8> {
        let mut cdb = Vec::with_capacity(CDB_LEN + self.extended_cdb.len());
        cdb.extend_from_slice(&self.cdb);
        cdb.extend_from_slice(&self.extended_cdb);
        cdb
    }
}

/// Task management function code (RFC 7143, Task Management Function Request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskMgmtFunction {
    /// 1: ABORT TASK.
    AbortTask,
    /// 2: ABORT TASK SET.
    AbortTaskSet,
    /// 3: CLEAR ACA.
    ClearAca,
    /// 4: CLEAR TASK SET.
    ClearTaskSet,
    /// 5: LOGICAL UNIT RESET.
    LogicalUnitReset,
    /// 6: TARGET WARM RESET.
    TargetWarmReset,
    /// 7: TARGET COLD RESET.
    TargetColdReset,
    /// 8: TASK REASSIGN.
    TaskReassign,
    /// Any other 7-bit code. Decoded rather than rejected because RFC 7143 wants a Task
    /// Management Function Response "function not supported" for it, not a Reject.
    Unknown(u8),
}

impl TaskMgmtFunction {
    pub(super) fn from_bits(bits: u8) -> TaskMgmtFunction {
        match bits {
            1 => TaskMgmtFunction::AbortTask,
            2 => TaskMgmtFunction::AbortTaskSet,
            3 => TaskMgmtFunction::ClearAca,
            4 => TaskMgmtFunction::ClearTaskSet,
            5 => TaskMgmtFunction::LogicalUnitReset,
            6 => TaskMgmtFunction::TargetWarmReset,
            7 => TaskMgmtFunction::TargetColdReset,
            8 => TaskMgmtFunction::TaskReassign,
            other => TaskMgmtFunction::Unknown(other),
        }
    }

    fn bits(self) -> u8 {
        match self {
            TaskMgmtFunction::AbortTask => 1,
            TaskMgmtFunction::AbortTaskSet => 2,
            TaskMgmtFunction::ClearAca => 3,
            TaskMgmtFunction::ClearTaskSet => 4,
            TaskMgmtFunction::LogicalUnitReset => 5,
            TaskMgmtFunction::TargetWarmReset => 6,
            TaskMgmtFunction::TargetColdReset => 7,
            TaskMgmtFunction::TaskReassign => 8,
            TaskMgmtFunction::Unknown(code) => {
                // A known code wrapped in Unknown would decode as the known variant.
                assert!(
                    code == 0 || (9..=0x7f).contains(&code),
                    "unknown TMF code {code}"
                );
                code
            }
        }
    }
}

/// Task Management Function Request (0x02).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskMgmtRequest {
    /// I bit: immediate delivery.
    pub immediate: bool,
    /// Function.
    pub function: TaskMgmtFunction,
    /// Logical unit (for LUN-scoped functions).
    pub lun: Lun,
    /// Initiator task tag of this request.
    pub itt: Itt,
    /// Referenced Task Tag: the task to abort, or [`Itt::RESERVED`].
    pub referenced_task_tag: Itt,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// RefCmdSN: CmdSN of the referenced task (ABORT TASK).
    pub ref_cmd_sn: u32,
    /// ExpDataSN (TASK REASSIGN).
    pub exp_data_sn: u32,
}

impl TaskMgmtRequest {
    pub(super) fn decode(f: &Frame<'_>) -> Result<TaskMgmtRequest, PduError> {
        f.expect_no_ahs()?;
        f.expect_no_data()?;
        Ok(TaskMgmtRequest {
            immediate: f.immediate(),
            function: TaskMgmtFunction::from_bits(f.flags() & 0x7f),
            lun: f.lun(),
            itt: f.itt(),
            referenced_task_tag: Itt(f.u32_at(20)),
            cmd_sn: f.u32_at(24),
            exp_stat_sn: f.u32_at(28),
            ref_cmd_sn: f.u32_at(32),
            exp_data_sn: f.u32_at(36),
        })
    }

    pub(super) fn encode(&self) -> Encoded<'_> {
        let flags = FLAG_FINAL | self.function.bits();
        let mut bhs = BhsWriter::new(opcode::TASK_MGMT_REQUEST, self.immediate, flags);
        bhs.lun(self.lun);
        bhs.itt(self.itt);
        bhs.u32_at(20, self.referenced_task_tag.0);
        bhs.u32_at(24, self.cmd_sn);
        bhs.u32_at(28, self.exp_stat_sn);
        bhs.u32_at(32, self.ref_cmd_sn);
        bhs.u32_at(36, self.exp_data_sn);
        Encoded {
            bhs,
            ahs: Vec::new(),
            data: DataParts::none(),
        }
    }
}

/// Login Request (0x03). Always immediate (the I bit is fixed at 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginRequest {
    /// T bit: the initiator wants to move to `nsg`.
    pub transit: bool,
    /// C bit: the text continues in the next Login Request.
    pub cont: bool,
    /// Current stage.
    pub csg: Stage,
    /// Next stage (meaningful only with `transit`).
    pub nsg: Stage,
    /// Version-max.
    pub version_max: u8,
    /// Version-min.
    pub version_min: u8,
    /// Initiator session ID.
    pub isid: Isid,
    /// TSIH: 0 for a new session, else the session this connection joins.
    pub tsih: u16,
    /// Initiator task tag.
    pub itt: Itt,
    /// Connection ID.
    pub cid: u16,
    /// CmdSN (the session's initial CmdSN on a leading login).
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// Text key=value pairs (possibly a fragment when `cont`).
    pub data: Vec<u8>,
}

impl LoginRequest {
    pub(super) fn decode(f: &Frame<'_>) -> Result<LoginRequest, PduError> {
        f.expect_no_ahs()?;
        let flags = f.flags();
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&f.bhs[8..14]);
        Ok(LoginRequest {
            transit: flags & FLAG_FINAL != 0,
            cont: flags & FLAG_CONTINUE != 0,
            csg: Stage::from_bits(flags >> 2),
            nsg: Stage::from_bits(flags),
            version_max: f.bhs[2],
            version_min: f.bhs[3],
            isid: Isid(isid),
            tsih: f.u16_at(14),
            itt: f.itt(),
            cid: f.u16_at(20),
            cmd_sn: f.u32_at(24),
            exp_stat_sn: f.u32_at(28),
            data: f.data.to_vec(),
        })
    }

    pub(super) fn encode(&self) -> Encoded<'_> {
        let flags = flag(self.transit, FLAG_FINAL)
            | flag(self.cont, FLAG_CONTINUE)
            | self.csg.bits() << 2
            | self.nsg.bits();
        // RFC 7143 (Login Request): the I bit is always 1 on a Login Request.
        let mut bhs = BhsWriter::new(opcode::LOGIN_REQUEST, true, flags);
        bhs.u8_at(2, self.version_max);
        bhs.u8_at(3, self.version_min);
        bhs.bhs[8..14].copy_from_slice(&self.isid.0);
        bhs.u16_at(14, self.tsih);
        bhs.itt(self.itt);
        bhs.u16_at(20, self.cid);
        bhs.u32_at(24, self.cmd_sn);
        bhs.u32_at(28, self.exp_stat_sn);
        Encoded {
            bhs,
            ahs: Vec::new(),
            data: DataParts::one(&self.data),
        }
    }
}

/// Text Request (0x04).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextRequest {
    /// I bit: immediate delivery.
    pub immediate: bool,
    /// F bit: the last request of this text exchange.
    pub fin: bool,
    /// C bit: the text continues in the next Text Request.
    pub cont: bool,
    /// LUN (reserved unless a key needs it).
    pub lun: Lun,
    /// Initiator task tag (constant over the exchange).
    pub itt: Itt,
    /// Target transfer tag: [`Ttt::RESERVED`] to start, else the target's tag to continue.
    pub ttt: Ttt,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// Text key=value pairs.
    pub data: Vec<u8>,
}

impl TextRequest {
    pub(super) fn decode(f: &Frame<'_>) -> Result<TextRequest, PduError> {
        f.expect_no_ahs()?;
        let flags = f.flags();
        Ok(TextRequest {
            immediate: f.immediate(),
            fin: flags & FLAG_FINAL != 0,
            cont: flags & FLAG_CONTINUE != 0,
            lun: f.lun(),
            itt: f.itt(),
            ttt: Ttt(f.u32_at(20)),
            cmd_sn: f.u32_at(24),
            exp_stat_sn: f.u32_at(28),
            data: f.data.to_vec(),
        })
    }

    pub(super) fn encode(&self) -> Encoded<'_> {
        let flags = flag(self.fin, FLAG_FINAL) | flag(self.cont, FLAG_CONTINUE);
        let mut bhs = BhsWriter::new(opcode::TEXT_REQUEST, self.immediate, flags);
        bhs.lun(self.lun);
        bhs.itt(self.itt);
        bhs.u32_at(20, self.ttt.0);
        bhs.u32_at(24, self.cmd_sn);
        bhs.u32_at(28, self.exp_stat_sn);
        Encoded {
            bhs,
            ahs: Vec::new(),
            data: DataParts::one(&self.data),
        }
    }
}

/// SCSI Data-Out (0x05).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataOut {
    /// F bit: the last PDU of this sequence (unsolicited burst or R2T answer).
    pub fin: bool,
    /// LUN (copied from the R2T, when answering one).
    pub lun: Lun,
    /// Initiator task tag of the command.
    pub itt: Itt,
    /// Target transfer tag from the R2T, or [`Ttt::RESERVED`] for unsolicited data.
    pub ttt: Ttt,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// DataSN within the sequence.
    pub data_sn: u32,
    /// Buffer Offset: where `data` goes within the command's data.
    pub buffer_offset: u32,
    /// The data.
    pub data: Vec<u8>,
}

impl DataOut {
    /// The header of a Data-Out PDU whose data segment was discarded (a data digest error,
    /// RFC 7143 section 7.8), with no data, and the length its data segment had: the target
    /// still follows the sequence it belonged to. `None` if `bhs` is not a Data-Out header.
    pub fn decode_discarded(bhs: &[u8; BHS_LEN]) -> Option<(DataOut, u32)> {
        let frame = Frame {
            bhs,
            ahs: &[],
            data: &[],
        };
        if frame.opcode() != opcode::DATA_OUT || bhs[4] != 0 {
            return None;
        }
        let header = DataOut::decode(&frame).ok()?;
        Some((header, data_segment_len(bhs)))
    }

    pub(super) fn decode(f: &Frame<'_>) -> Result<DataOut, PduError> {
        f.expect_no_ahs()?;
        Ok(DataOut {
            fin: f.flags() & FLAG_FINAL != 0,
            lun: f.lun(),
            itt: f.itt(),
            ttt: Ttt(f.u32_at(20)),
            exp_stat_sn: f.u32_at(28),
            data_sn: f.u32_at(36),
            buffer_offset: f.u32_at(40),
            data: f.data.to_vec(),
        })
    }

    pub(super) fn encode(&self) -> Encoded<'_> {
        let mut bhs = BhsWriter::new(opcode::DATA_OUT, false, flag(self.fin, FLAG_FINAL));
        bhs.lun(self.lun);
        bhs.itt(self.itt);
        bhs.u32_at(20, self.ttt.0);
        bhs.u32_at(28, self.exp_stat_sn);
        bhs.u32_at(36, self.data_sn);
        bhs.u32_at(40, self.buffer_offset);
        Encoded {
            bhs,
            ahs: Vec::new(),
            data: DataParts::one(&self.data),
        }
    }
}

/// Logout reason code (RFC 7143, Logout Request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogoutReason {
    /// 0: close the session.
    CloseSession,
    /// 1: close the connection.
    CloseConnection,
    /// 2: remove the connection for recovery.
    RemoveConnectionForRecovery,
}

/// Logout Request (0x06).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutRequest {
    /// I bit: immediate delivery.
    pub immediate: bool,
    /// Reason code.
    pub reason: LogoutReason,
    /// Initiator task tag.
    pub itt: Itt,
    /// CID of the connection to close (reserved when closing the session).
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

impl LogoutRequest {
    pub(super) fn decode(f: &Frame<'_>) -> Result<LogoutRequest, PduError> {
        f.expect_no_ahs()?;
        f.expect_no_data()?;
        let reason = match f.flags() & 0x7f {
            0 => LogoutReason::CloseSession,
            1 => LogoutReason::CloseConnection,
            2 => LogoutReason::RemoveConnectionForRecovery,
            _ => return Err(f.invalid("Reason Code")),
        };
        Ok(LogoutRequest {
            immediate: f.immediate(),
            reason,
            itt: f.itt(),
            cid: f.u16_at(20),
            cmd_sn: f.u32_at(24),
            exp_stat_sn: f.u32_at(28),
        })
    }

    pub(super) fn encode(&self) -> Encoded<'_> {
        let reason = match self.reason {
            LogoutReason::CloseSession => 0,
            LogoutReason::CloseConnection => 1,
            LogoutReason::RemoveConnectionForRecovery => 2,
        };
        let mut bhs = BhsWriter::new(opcode::LOGOUT_REQUEST, self.immediate, FLAG_FINAL | reason);
        bhs.itt(self.itt);
        bhs.u16_at(20, self.cid);
        bhs.u32_at(24, self.cmd_sn);
        bhs.u32_at(28, self.exp_stat_sn);
        Encoded {
            bhs,
            ahs: Vec::new(),
            data: DataParts::none(),
        }
    }
}

/// SNACK type (RFC 7143, SNACK Request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnackType {
    /// 0: Data/R2T SNACK.
    DataR2t,
    /// 1: Status SNACK.
    Status,
    /// 2: DataACK.
    DataAck,
    /// 3: R-Data SNACK.
    RData,
}

/// SNACK Request (0x10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnackRequest {
    /// Type.
    pub snack_type: SnackType,
    /// LUN (DataACK).
    pub lun: Lun,
    /// Initiator task tag, or [`Itt::RESERVED`] for Status SNACK.
    pub itt: Itt,
    /// Target transfer tag (DataACK) or SNACK Tag (R-Data), else [`Ttt::RESERVED`].
    pub ttt: Ttt,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// BegRun: first DataSN, R2TSN or StatSN requested.
    pub beg_run: u32,
    /// RunLength: how many; 0 means all from BegRun on.
    pub run_length: u32,
}

impl SnackRequest {
    pub(super) fn decode(f: &Frame<'_>) -> Result<SnackRequest, PduError> {
        f.expect_no_ahs()?;
        f.expect_no_data()?;
        let snack_type = match f.flags() & 0x0f {
            0 => SnackType::DataR2t,
            1 => SnackType::Status,
            2 => SnackType::DataAck,
            3 => SnackType::RData,
            _ => return Err(f.invalid("Type")),
        };
        Ok(SnackRequest {
            snack_type,
            lun: f.lun(),
            itt: f.itt(),
            ttt: Ttt(f.u32_at(20)),
            exp_stat_sn: f.u32_at(28),
            beg_run: f.u32_at(40),
            run_length: f.u32_at(44),
        })
    }

    pub(super) fn encode(&self) -> Encoded<'_> {
        let kind = match self.snack_type {
            SnackType::DataR2t => 0,
            SnackType::Status => 1,
            SnackType::DataAck => 2,
            SnackType::RData => 3,
        };
        let mut bhs = BhsWriter::new(opcode::SNACK_REQUEST, false, FLAG_FINAL | kind);
        bhs.lun(self.lun);
        bhs.itt(self.itt);
        bhs.u32_at(20, self.ttt.0);
        bhs.u32_at(28, self.exp_stat_sn);
        bhs.u32_at(40, self.beg_run);
        bhs.u32_at(44, self.run_length);
        Encoded {
            bhs,
            ahs: Vec::new(),
            data: DataParts::none(),
        }
    }
}

/// `bit` when `set`, else 0.
pub(super) fn flag(set: bool, bit: u8) -> u8 {
    if set { bit } else { 0 }
}
