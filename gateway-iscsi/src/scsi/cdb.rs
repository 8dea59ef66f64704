//! CDB parsing: bytes from the initiator into a typed [`Command`], with no IO and no state.
//!
//! [`parse`] checks only what the CDB alone decides (known opcode, CDB long enough, fields we
//! do not support left zero). Checks that need the device (LBA range, block limits that depend
//! on the block size) happen at execution. Reserved bits are not checked: SPC-4 allows either,
//! and being lenient keeps old initiators that set obsolete bits working.

use crate::scsi::{pr::ReservationType, sense::Sense};

/// CDB operation codes this layer implements (SPC-4 and SBC-4 command tables).
pub mod opcode {
    /// TEST UNIT READY.
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE.
    pub const REQUEST_SENSE: u8 = 0x03;
    /// READ (6).
    pub const READ_6: u8 = 0x08;
    /// WRITE (6).
    pub const WRITE_6: u8 = 0x0A;
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// MODE SELECT (6).
    pub const MODE_SELECT_6: u8 = 0x15;
    /// MODE SENSE (6).
    pub const MODE_SENSE_6: u8 = 0x1A;
    /// READ CAPACITY (10).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ (10).
    pub const READ_10: u8 = 0x28;
    /// WRITE (10).
    pub const WRITE_10: u8 = 0x2A;
    /// WRITE AND VERIFY (10).
    pub const WRITE_AND_VERIFY_10: u8 = 0x2E;
    /// VERIFY (10).
    pub const VERIFY_10: u8 = 0x2F;
    /// SYNCHRONIZE CACHE (10).
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    /// WRITE SAME (10).
    pub const WRITE_SAME_10: u8 = 0x41;
    /// UNMAP.
    pub const UNMAP: u8 = 0x42;
    /// MODE SELECT (10).
    pub const MODE_SELECT_10: u8 = 0x55;
    /// MODE SENSE (10).
    pub const MODE_SENSE_10: u8 = 0x5A;
    /// PERSISTENT RESERVE IN.
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    /// PERSISTENT RESERVE OUT.
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    /// READ (16).
    pub const READ_16: u8 = 0x88;
    /// COMPARE AND WRITE.
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    /// WRITE (16).
    pub const WRITE_16: u8 = 0x8A;
    /// WRITE AND VERIFY (16).
    pub const WRITE_AND_VERIFY_16: u8 = 0x8E;
    /// VERIFY (16).
    pub const VERIFY_16: u8 = 0x8F;
    /// SYNCHRONIZE CACHE (16).
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    /// WRITE SAME (16).
    pub const WRITE_SAME_16: u8 = 0x93;
    /// SERVICE ACTION IN (16); we implement its READ CAPACITY (16) service action.
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    /// REPORT LUNS.
    pub const REPORT_LUNS: u8 = 0xA0;
    /// MAINTENANCE IN; we implement its REPORT SUPPORTED OPERATION CODES service action.
    pub const MAINTENANCE_IN: u8 = 0xA3;
    /// READ (12).
    pub const READ_12: u8 = 0xA8;
    /// WRITE (12).
    pub const WRITE_12: u8 = 0xAA;

    /// The READ CAPACITY (16) service action of SERVICE ACTION IN (16).
    pub const SA_READ_CAPACITY_16: u16 = 0x10;
    /// The REPORT SUPPORTED OPERATION CODES service action of MAINTENANCE IN.
    pub const SA_REPORT_SUPPORTED_OPERATION_CODES: u16 = 0x0C;
}

/// A range of logical blocks named by a CDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRange {
    /// The first logical block.
    pub lba: u64,
    /// How many logical blocks; zero is legal and transfers nothing.
    pub blocks: u32,
    /// The CDB byte where the length field starts, for the field pointer when the length is
    /// over a limit.
    pub length_field: u16,
}

/// What a VERIFY compares (its BYTCHK field, SBC-4 5.34).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyCheck {
    /// BYTCHK 00b: check that the blocks are readable; no data-out.
    Medium,
    /// BYTCHK 01b: compare the blocks with as many blocks of data-out.
    Compare,
    /// BYTCHK 11b: compare every block with one block of data-out.
    CompareOneBlock,
}

/// Which of the two MODE SENSE / MODE SELECT CDB (and header) layouts a command uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeFormat {
    /// MODE SENSE (6) / MODE SELECT (6): 4-byte header.
    Six,
    /// MODE SENSE (10) / MODE SELECT (10): 8-byte header.
    Ten,
}

/// The PC field of MODE SENSE: which values of the mode pages to return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageControl {
    /// The values in force.
    Current,
    /// A mask of the bits MODE SELECT may change.
    Changeable,
    /// The values at power on.
    Default,
    /// The saved values (we save nothing).
    Saved,
}

/// The service action of PERSISTENT RESERVE IN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrInAction {
    /// READ KEYS (0x00).
    ReadKeys,
    /// READ RESERVATION (0x01).
    ReadReservation,
    /// REPORT CAPABILITIES (0x02).
    ReportCapabilities,
    /// READ FULL STATUS (0x03).
    ReadFullStatus,
}

/// The service action of PERSISTENT RESERVE OUT (REGISTER AND MOVE and REPLACE LOST
/// RESERVATION are not implemented).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrOutAction {
    /// REGISTER (0x00).
    Register,
    /// RESERVE (0x01).
    Reserve,
    /// RELEASE (0x02).
    Release,
    /// CLEAR (0x03).
    Clear,
    /// PREEMPT (0x04).
    Preempt,
    /// PREEMPT AND ABORT (0x05).
    PreemptAndAbort,
    /// REGISTER AND IGNORE EXISTING KEY (0x06).
    RegisterAndIgnoreExistingKey,
}

/// What REPORT SUPPORTED OPERATION CODES asks for (its REPORTING OPTIONS field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpcodeQuery {
    /// 000b: every command, with its CDB length.
    All,
    /// 001b: one operation code that has no service actions.
    Opcode {
        /// The REQUESTED OPERATION CODE.
        opcode: u8,
    },
    /// 010b: one operation code and service action.
    OpcodeServiceAction {
        /// The REQUESTED OPERATION CODE.
        opcode: u8,
        /// The REQUESTED SERVICE ACTION.
        service_action: u16,
    },
    /// 011b: one operation code, with the service action if the opcode has them.
    OpcodeMaybeServiceAction {
        /// The REQUESTED OPERATION CODE.
        opcode: u8,
        /// The REQUESTED SERVICE ACTION, ignored for opcodes without service actions.
        service_action: u16,
    },
}

/// A parsed CDB. READ, WRITE and the other block commands fold their 6/10/12/16-byte forms
/// into one variant; the form only changes field widths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// TEST UNIT READY.
    TestUnitReady,
    /// REQUEST SENSE.
    RequestSense {
        /// The ALLOCATION LENGTH.
        allocation_length: u8,
    },
    /// INQUIRY, standard data or a VPD page.
    Inquiry {
        /// EVPD: return the VPD page `page_code` instead of the standard data.
        vital_product_data: bool,
        /// The PAGE CODE (zero when `vital_product_data` is false).
        page_code: u8,
        /// The ALLOCATION LENGTH.
        allocation_length: u16,
    },
    /// MODE SENSE (6) or (10).
    ModeSense {
        /// The CDB layout, which is also the header layout of the returned data.
        format: ModeFormat,
        /// The PC field.
        page_control: PageControl,
        /// The PAGE CODE (0x3F for all pages).
        page_code: u8,
        /// The SUBPAGE CODE.
        subpage_code: u8,
        /// DBD clear: return a block descriptor.
        block_descriptor: bool,
        /// LLBAA: the initiator accepts a long LBA block descriptor (MODE SENSE (10) only).
        long_lba_accepted: bool,
        /// The ALLOCATION LENGTH.
        allocation_length: u16,
    },
    /// MODE SELECT (6) or (10).
    ModeSelect {
        /// The CDB layout, which is also the header layout of the parameter data.
        format: ModeFormat,
        /// PF: the parameter data holds standard mode pages.
        page_format: bool,
        /// The PARAMETER LIST LENGTH.
        parameter_list_length: u16,
    },
    /// READ CAPACITY (10).
    ReadCapacity10,
    /// READ CAPACITY (16).
    ReadCapacity16 {
        /// The ALLOCATION LENGTH.
        allocation_length: u32,
    },
    /// READ (6), (10), (12) or (16).
    Read(BlockRange),
    /// WRITE (6), (10), (12) or (16).
    Write(BlockRange),
    /// WRITE AND VERIFY (10) or (16).
    WriteAndVerify {
        /// The blocks to write.
        range: BlockRange,
        /// BYTCHK 01b: compare the written blocks with the data-out after writing.
        compare: bool,
    },
    /// VERIFY (10) or (16).
    Verify {
        /// The blocks to verify.
        range: BlockRange,
        /// What to compare.
        check: VerifyCheck,
    },
    /// SYNCHRONIZE CACHE (10) or (16).
    SynchronizeCache(BlockRange),
    /// WRITE SAME (10) or (16).
    WriteSame {
        /// The blocks to write.
        range: BlockRange,
        /// UNMAP: deallocate the blocks if the data allows it.
        unmap: bool,
        /// NDOB (WRITE SAME (16) only): no data-out, the block is all zeros.
        no_data_out: bool,
    },
    /// UNMAP.
    Unmap {
        /// The PARAMETER LIST LENGTH.
        parameter_list_length: u16,
    },
    /// COMPARE AND WRITE.
    CompareAndWrite(BlockRange),
    /// REPORT LUNS.
    ReportLuns {
        /// SELECT REPORT 01b: only well known logical units (we have none).
        well_known_only: bool,
        /// The ALLOCATION LENGTH.
        allocation_length: u32,
    },
    /// REPORT SUPPORTED OPERATION CODES.
    ReportSupportedOperationCodes {
        /// What to report.
        query: OpcodeQuery,
        /// RCTD: include command timeouts descriptors.
        timeouts: bool,
        /// The ALLOCATION LENGTH.
        allocation_length: u32,
    },
    /// PERSISTENT RESERVE IN.
    PersistentReserveIn {
        /// The service action.
        action: PrInAction,
        /// The ALLOCATION LENGTH.
        allocation_length: u16,
    },
    /// PERSISTENT RESERVE OUT.
    PersistentReserveOut {
        /// The service action.
        action: PrOutAction,
        /// The TYPE field, for the service actions that use it (RESERVE, RELEASE, PREEMPT,
        /// PREEMPT AND ABORT); `None` for the others, which ignore it.
        reservation_type: Option<ReservationType>,
        /// The PARAMETER LIST LENGTH (always 24: the only list length we accept).
        parameter_list_length: u32,
    },
}

/// The only PERSISTENT RESERVE OUT parameter list length we accept: the basic list, without
/// SPEC_I_PT TransportIDs (SPC-4 6.15.3).
pub const PR_OUT_PARAMETER_LIST_LEN: u32 = 24;

/// The CDB length implied by an operation code's group (SAM-5 5.2), for the groups we
/// implement commands in.
pub fn cdb_length(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// Parses a CDB. `cdb` may be longer than the command's CDB (iSCSI carries at least 16 bytes);
/// the extra bytes are ignored.
pub fn parse(cdb: &[u8]) -> Result<Command, Sense> {
    let Some(&opcode) = cdb.first() else {
        return Err(Sense::invalid_opcode());
    };
    let Some(length) = cdb_length(opcode) else {
        return Err(Sense::invalid_opcode());
    };
    if cdb.len() < length {
        // The initiator sent fewer bytes than the opcode's group defines: the field after the
        // last byte present is missing.
        return Err(Sense::invalid_field_in_cdb(cdb.len() as u16, None));
    }
    let cdb = Cdb(&cdb[..length]);
    // NACA (CONTROL byte bit 2) asks for ACA handling, which we do not implement (SAM-5 5.9).
    let control = length - 1;
    if cdb.byte(control) & 0x04 != 0 {
        return Err(Sense::invalid_field_in_cdb(control as u16, Some(2)));
    }
    parse_by_opcode(cdb)
}

fn parse_by_opcode(cdb: Cdb<'_>) -> Result<Command, Sense> {
    use opcode::*;
    match cdb.byte(0) {
        TEST_UNIT_READY => Ok(Command::TestUnitReady),
        REQUEST_SENSE => parse_request_sense(cdb),
        INQUIRY => parse_inquiry(cdb),
        MODE_SENSE_6 | MODE_SENSE_10 => parse_mode_sense(cdb),
        MODE_SELECT_6 | MODE_SELECT_10 => parse_mode_select(cdb),
        READ_CAPACITY_10 => Ok(Command::ReadCapacity10),
        SERVICE_ACTION_IN_16 => match cdb.service_action() {
            SA_READ_CAPACITY_16 => Ok(Command::ReadCapacity16 {
                allocation_length: cdb.u32(10),
            }),
            _ => Err(Sense::invalid_field_in_cdb(1, Some(4))),
        },
        READ_6 | READ_10 | READ_12 | READ_16 => {
            cdb.check_protect_field()?;
            Ok(Command::Read(cdb.block_range()))
        }
        WRITE_6 | WRITE_10 | WRITE_12 | WRITE_16 => {
            cdb.check_protect_field()?;
            Ok(Command::Write(cdb.block_range()))
        }
        WRITE_AND_VERIFY_10 | WRITE_AND_VERIFY_16 => {
            cdb.check_protect_field()?;
            let compare = match (cdb.byte(1) >> 1) & 0x03 {
                0b00 => false,
                0b01 => true,
                _ => return Err(Sense::invalid_field_in_cdb(1, Some(2))),
            };
            Ok(Command::WriteAndVerify {
                range: cdb.block_range(),
                compare,
            })
        }
        VERIFY_10 | VERIFY_16 => parse_verify(cdb),
        SYNCHRONIZE_CACHE_10 | SYNCHRONIZE_CACHE_16 => {
            Ok(Command::SynchronizeCache(cdb.block_range()))
        }
        WRITE_SAME_10 | WRITE_SAME_16 => parse_write_same(cdb),
        UNMAP => {
            // ANCHOR: we report ANC_SUP=0, so anchoring is not supported.
            if cdb.byte(1) & 0x01 != 0 {
                return Err(Sense::invalid_field_in_cdb(1, Some(0)));
            }
            Ok(Command::Unmap {
                parameter_list_length: cdb.u16(7),
            })
        }
        COMPARE_AND_WRITE => {
            cdb.check_protect_field()?;
            let range = BlockRange {
                lba: cdb.u64(2),
                blocks: cdb.byte(13).into(),
                length_field: 13,
            };
            Ok(Command::CompareAndWrite(range))
        }
        REPORT_LUNS => parse_report_luns(cdb),
        MAINTENANCE_IN => match cdb.service_action() {
            SA_REPORT_SUPPORTED_OPERATION_CODES => parse_report_supported_opcodes(cdb),
            _ => Err(Sense::invalid_field_in_cdb(1, Some(4))),
        },
        PERSISTENT_RESERVE_IN => parse_pr_in(cdb),
        PERSISTENT_RESERVE_OUT => parse_pr_out(cdb),
        _ => Err(Sense::invalid_opcode()),
    }
}

fn parse_request_sense(cdb: Cdb<'_>) -> Result<Command, Sense> {
    // DESC asks for descriptor-format sense, which we do not produce (SPC-4 6.39).
    if cdb.byte(1) & 0x01 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(0)));
    }
    Ok(Command::RequestSense {
        allocation_length: cdb.byte(4),
    })
}

fn parse_inquiry(cdb: Cdb<'_>) -> Result<Command, Sense> {
    // CMDDT (obsolete) asked for command support data; SPC-4 says to reject it.
    if cdb.byte(1) & 0x02 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(1)));
    }
    let vital_product_data = cdb.byte(1) & 0x01 != 0;
    let page_code = cdb.byte(2);
    if !vital_product_data && page_code != 0 {
        return Err(Sense::invalid_field_in_cdb(2, None));
    }
    Ok(Command::Inquiry {
        vital_product_data,
        page_code,
        allocation_length: cdb.u16(3),
    })
}

fn parse_mode_sense(cdb: Cdb<'_>) -> Result<Command, Sense> {
    let (format, allocation_length, long_lba_accepted) = if cdb.byte(0) == opcode::MODE_SENSE_6 {
        (ModeFormat::Six, u16::from(cdb.byte(4)), false)
    } else {
        (ModeFormat::Ten, cdb.u16(7), cdb.byte(1) & 0x10 != 0)
    };
    let page_control = match cdb.byte(2) >> 6 {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        _ => PageControl::Saved,
    };
    Ok(Command::ModeSense {
        format,
        page_control,
        page_code: cdb.byte(2) & 0x3F,
        subpage_code: cdb.byte(3),
        block_descriptor: cdb.byte(1) & 0x08 == 0,
        long_lba_accepted,
        allocation_length,
    })
}

fn parse_mode_select(cdb: Cdb<'_>) -> Result<Command, Sense> {
    // SP asks to save the pages; nothing is saveable (every page reports PS=0).
    if cdb.byte(1) & 0x01 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(0)));
    }
    let page_format = cdb.byte(1) & 0x10 != 0;
    let (format, parameter_list_length) = if cdb.byte(0) == opcode::MODE_SELECT_6 {
        (ModeFormat::Six, u16::from(cdb.byte(4)))
    } else {
        (ModeFormat::Ten, cdb.u16(7))
    };
    Ok(Command::ModeSelect {
        format,
        page_format,
        parameter_list_length,
    })
}

fn parse_verify(cdb: Cdb<'_>) -> Result<Command, Sense> {
    cdb.check_protect_field()?;
    let check = match (cdb.byte(1) >> 1) & 0x03 {
        0b00 => VerifyCheck::Medium,
        0b01 => VerifyCheck::Compare,
        0b11 => VerifyCheck::CompareOneBlock,
        _ => return Err(Sense::invalid_field_in_cdb(1, Some(2))),
    };
    Ok(Command::Verify {
        range: cdb.block_range(),
        check,
    })
}

fn parse_write_same(cdb: Cdb<'_>) -> Result<Command, Sense> {
    cdb.check_protect_field()?;
    let flags = cdb.byte(1);
    // ANCHOR: ANC_SUP=0 in the logical block provisioning VPD page.
    if flags & 0x10 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(4)));
    }
    // PBDATA and LBDATA (obsolete in SBC-4) ask to write addresses into the blocks.
    if flags & 0x06 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(2)));
    }
    let no_data_out = cdb.byte(0) == opcode::WRITE_SAME_16 && flags & 0x01 != 0;
    Ok(Command::WriteSame {
        range: cdb.block_range(),
        unmap: flags & 0x08 != 0,
        no_data_out,
    })
}

fn parse_report_luns(cdb: Cdb<'_>) -> Result<Command, Sense> {
    let well_known_only = match cdb.byte(2) {
        0x00 | 0x02 => false,
        0x01 => true,
        _ => return Err(Sense::invalid_field_in_cdb(2, None)),
    };
    Ok(Command::ReportLuns {
        well_known_only,
        allocation_length: cdb.u32(6),
    })
}

fn parse_report_supported_opcodes(cdb: Cdb<'_>) -> Result<Command, Sense> {
    let opcode = cdb.byte(3);
    let service_action = cdb.u16(4);
    let query = match cdb.byte(2) & 0x07 {
        0 => OpcodeQuery::All,
        1 => OpcodeQuery::Opcode { opcode },
        2 => OpcodeQuery::OpcodeServiceAction {
            opcode,
            service_action,
        },
        3 => OpcodeQuery::OpcodeMaybeServiceAction {
            opcode,
            service_action,
        },
        _ => return Err(Sense::invalid_field_in_cdb(2, Some(2))),
    };
    let timeouts = cdb.byte(2) & 0x80 != 0;
    Ok(Command::ReportSupportedOperationCodes {
        query,
        timeouts,
        allocation_length: cdb.u32(6),
    })
}

fn parse_pr_in(cdb: Cdb<'_>) -> Result<Command, Sense> {
    let action = match cdb.service_action() {
        0x00 => PrInAction::ReadKeys,
        0x01 => PrInAction::ReadReservation,
        0x02 => PrInAction::ReportCapabilities,
        0x03 => PrInAction::ReadFullStatus,
        _ => return Err(Sense::invalid_field_in_cdb(1, Some(4))),
    };
    Ok(Command::PersistentReserveIn {
        action,
        allocation_length: cdb.u16(7),
    })
}

fn parse_pr_out(cdb: Cdb<'_>) -> Result<Command, Sense> {
    let action = match cdb.service_action() {
        0x00 => PrOutAction::Register,
        0x01 => PrOutAction::Reserve,
        0x02 => PrOutAction::Release,
        0x03 => PrOutAction::Clear,
        0x04 => PrOutAction::Preempt,
        0x05 => PrOutAction::PreemptAndAbort,
        0x06 => PrOutAction::RegisterAndIgnoreExistingKey,
        // REGISTER AND MOVE, REPLACE LOST RESERVATION and reserved values.
        _ => return Err(Sense::invalid_field_in_cdb(1, Some(4))),
    };
    let uses_type = matches!(
        action,
        PrOutAction::Reserve
            | PrOutAction::Release
            | PrOutAction::Preempt
            | PrOutAction::PreemptAndAbort
    );
    let reservation_type = if uses_type {
        // SCOPE: only LU_SCOPE (0h) exists in SPC-4.
        if cdb.byte(2) >> 4 != 0 {
            return Err(Sense::invalid_field_in_cdb(2, Some(7)));
        }
        let Some(kind) = ReservationType::from_code(cdb.byte(2) & 0x0F) else {
            return Err(Sense::invalid_field_in_cdb(2, Some(3)));
        };
        Some(kind)
    } else {
        None
    };
    let parameter_list_length = cdb.u32(5);
    // The basic parameter list is 24 bytes; we do not take SPEC_I_PT TransportID lists, so
    // any other length is wrong (SPC-4 6.15.3). Checking here also bounds the data-out.
    if parameter_list_length != PR_OUT_PARAMETER_LIST_LEN {
        return Err(Sense::parameter_list_length_error());
    }
    Ok(Command::PersistentReserveOut {
        action,
        reservation_type,
        parameter_list_length,
    })
}

/// How many data-out bytes the initiator must send for `command` on a logical unit with
/// `block_size_bytes` blocks. Limits are not checked here (see [`crate::scsi::Lun::prepare`]);
/// the value is exact, which is why it is 64-bit: a WRITE (16) may name 2^32 blocks.
pub fn data_out_len(command: &Command, block_size_bytes: u32) -> u64 {
    let block_size = u64::from(block_size_bytes);
    match *command {
        Command::Write(range) | Command::WriteAndVerify { range, .. } => {
            u64::from(range.blocks) * block_size
        }
        Command::Verify { range, check } => match check {
            VerifyCheck::Medium => 0,
            VerifyCheck::Compare => u64::from(range.blocks) * block_size,
            VerifyCheck::CompareOneBlock if range.blocks == 0 => 0,
            VerifyCheck::CompareOneBlock => block_size,
        },
        Command::WriteSame { no_data_out, .. } => {
            if no_data_out {
                0
            } else {
                block_size
            }
        }
        Command::CompareAndWrite(range) => 2 * u64::from(range.blocks) * block_size,
        Command::Unmap {
            parameter_list_length,
        } => parameter_list_length.into(),
        Command::ModeSelect {
            parameter_list_length,
            ..
        } => parameter_list_length.into(),
        Command::PersistentReserveOut {
            parameter_list_length,
            ..
        } => parameter_list_length.into(),
        Command::TestUnitReady
        | Command::RequestSense { .. }
        | Command::Inquiry { .. }
        | Command::ModeSense { .. }
        | Command::ReadCapacity10
        | Command::ReadCapacity16 { .. }
        | Command::Read(_)
        | Command::SynchronizeCache(_)
        | Command::ReportLuns { .. }
        | Command::ReportSupportedOperationCodes { .. }
        | Command::PersistentReserveIn { .. } => 0,
    }
}

/// The most data-in bytes `command` may return: its allocation length, or its transfer
/// length for READ. Execution never returns more.
pub fn data_in_len(command: &Command, block_size_bytes: u32) -> u64 {
    match *command {
        Command::Read(range) => u64::from(range.blocks) * u64::from(block_size_bytes),
        Command::RequestSense { allocation_length } => allocation_length.into(),
        Command::Inquiry {
            allocation_length, ..
        } => allocation_length.into(),
        Command::ModeSense {
            allocation_length, ..
        } => allocation_length.into(),
        Command::ReadCapacity10 => crate::scsi::inquiry::READ_CAPACITY_10_LEN as u64,
        Command::ReadCapacity16 { allocation_length } => allocation_length.into(),
        Command::ReportLuns {
            allocation_length, ..
        } => allocation_length.into(),
        Command::ReportSupportedOperationCodes {
            allocation_length, ..
        } => allocation_length.into(),
        Command::PersistentReserveIn {
            allocation_length, ..
        } => allocation_length.into(),
        Command::TestUnitReady
        | Command::ModeSelect { .. }
        | Command::Write(_)
        | Command::WriteAndVerify { .. }
        | Command::Verify { .. }
        | Command::SynchronizeCache(_)
        | Command::WriteSame { .. }
        | Command::Unmap { .. }
        | Command::CompareAndWrite(_)
        | Command::PersistentReserveOut { .. } => 0,
    }
}

/// A CDB whose length [`parse`] has checked against its opcode, so the fixed-offset reads
/// below stay in bounds.
#[derive(Clone, Copy)]
struct Cdb<'a>(&'a [u8]);

impl Cdb<'_> {
    fn byte(self, index: usize) -> u8 {
        self.0[index]
    }

    fn u16(self, index: usize) -> u16 {
        u16::from_be_bytes([self.0[index], self.0[index + 1]])
    }

    fn u32(self, index: usize) -> u32 {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&self.0[index..index + 4]);
        u32::from_be_bytes(bytes)
    }

    fn u64(self, index: usize) -> u64 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&self.0[index..index + 8]);
        u64::from_be_bytes(bytes)
    }

    /// The 5-bit SERVICE ACTION field of byte 1.
    fn service_action(self) -> u16 {
        u16::from(self.byte(1) & 0x1F)
    }

    /// Rejects a non-zero RDPROTECT/WRPROTECT/VRPROTECT field (bits 7-5 of byte 1 in the
    /// 10/12/16-byte CDBs): we report PROTECT=0, so there is no protection information.
    fn check_protect_field(self) -> Result<(), Sense> {
        if self.0.len() > 6 && self.byte(1) >> 5 != 0 {
            return Err(Sense::invalid_field_in_cdb(1, Some(7)));
        }
        Ok(())
    }

    /// The LBA and length fields of a block command, by CDB length (SBC-4 5.x: the 6-byte
    /// form has a 21-bit LBA and an 8-bit length where 0 means 256 blocks).
    fn block_range(self) -> BlockRange {
        match self.0.len() {
            6 => {
                let lba = u32::from_be_bytes([0, self.byte(1) & 0x1F, self.byte(2), self.byte(3)]);
                let blocks = match self.byte(4) {
                    0 => 256,
                    blocks => u32::from(blocks),
                };
                BlockRange {
                    lba: lba.into(),
                    blocks,
                    length_field: 4,
                }
            }
            10 => BlockRange {
                lba: self.u32(2).into(),
                blocks: self.u16(7).into(),
                length_field: 7,
            },
            12 => BlockRange {
                lba: self.u32(2).into(),
                blocks: self.u32(6),
                length_field: 6,
            },
            length => {
                assert_eq!(length, 16, "block commands have 6, 10, 12 or 16 byte CDBs");
                BlockRange {
                    lba: self.u64(2),
                    blocks: self.u32(10),
                    length_field: 10,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::{AdditionalSense, SenseKey};

    fn cdb(bytes: &[u8]) -> Vec<u8> {
        let mut cdb = bytes.to_vec();
        cdb.resize(16, 0);
        cdb
    }

    /// READ (6) and WRITE (6) use a 21-bit LBA and turn a zero length into 256 blocks.
    #[test]
    fn six_byte_block_commands() {
        let read = parse(&cdb(&[0x08, 0xFF, 0x12, 0x34, 0x00, 0x00])).expect("valid READ (6)");
        assert_eq!(
            read,
            Command::Read(BlockRange {
                lba: 0x1F1234,
                blocks: 256,
                length_field: 4
            })
        );
        let write = parse(&cdb(&[0x0A, 0x00, 0x00, 0x07, 0x03, 0x00])).expect("valid WRITE (6)");
        assert_eq!(
            write,
            Command::Write(BlockRange {
                lba: 7,
                blocks: 3,
                length_field: 4
            })
        );
        assert_eq!(data_out_len(&write, 512), 3 * 512);
    }

    #[test]
    fn sixteen_byte_block_commands() {
        let mut bytes = cdb(&[0x88]);
        bytes[2..10].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        bytes[10..14].copy_from_slice(&9u32.to_be_bytes());
        let read = parse(&bytes).expect("valid READ (16)");
        let range = BlockRange {
            lba: 0x0102_0304_0506_0708,
            blocks: 9,
            length_field: 10,
        };
        assert_eq!(read, Command::Read(range));
        assert_eq!(data_in_len(&read, 4096), 9 * 4096);
    }

    #[test]
    fn unknown_opcode_and_short_cdb() {
        let sense = parse(&cdb(&[0xC0])).expect_err("vendor-specific opcode");
        assert_eq!(
            sense.additional,
            AdditionalSense::InvalidCommandOperationCode
        );
        let sense = parse(&cdb(&[0x02])).expect_err("unassigned opcode");
        assert_eq!(
            sense.additional,
            AdditionalSense::InvalidCommandOperationCode
        );
        let sense = parse(&[0x28, 0, 0]).expect_err("READ (10) in 3 bytes");
        assert_eq!(sense.key, SenseKey::IllegalRequest);
        assert_eq!(
            parse(&[]).expect_err("empty CDB").key,
            SenseKey::IllegalRequest
        );
    }

    #[test]
    fn rejects_protection_naca_and_evpd_mismatch() {
        let sense = parse(&cdb(&[0x28, 0x20])).expect_err("RDPROTECT set");
        assert_eq!(sense, Sense::invalid_field_in_cdb(1, Some(7)));
        let sense = parse(&cdb(&[0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0x04])).expect_err("NACA set");
        assert_eq!(sense, Sense::invalid_field_in_cdb(9, Some(2)));
        let sense = parse(&cdb(&[0x12, 0x00, 0x80, 0, 36, 0])).expect_err("page without EVPD");
        assert_eq!(sense, Sense::invalid_field_in_cdb(2, None));
    }

    #[test]
    fn compare_and_write_needs_twice_the_blocks() {
        let mut bytes = cdb(&[0x89]);
        bytes[13] = 2;
        let command = parse(&bytes).expect("valid COMPARE AND WRITE");
        assert_eq!(data_out_len(&command, 512), 2048);
    }

    #[test]
    fn persistent_reserve_out_fields() {
        let mut bytes = cdb(&[0x5F, 0x01, 0x03]);
        bytes[5..9].copy_from_slice(&24u32.to_be_bytes());
        let command = parse(&bytes).expect("valid RESERVE");
        assert_eq!(
            command,
            Command::PersistentReserveOut {
                action: PrOutAction::Reserve,
                reservation_type: Some(ReservationType::ExclusiveAccess),
                parameter_list_length: 24,
            }
        );
        bytes[8] = 25;
        assert_eq!(parse(&bytes), Err(Sense::parameter_list_length_error()));
        bytes[8] = 24;
        bytes[2] = 0x02;
        assert_eq!(parse(&bytes), Err(Sense::invalid_field_in_cdb(2, Some(3))));
    }
}
