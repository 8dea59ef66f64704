//! SCSI status codes and fixed-format sense data (SPC-4 4.5.3).
//!
//! Every protocol error of the SCSI layer becomes a [`Sense`] here, and only here: the command
//! handlers name an [`AdditionalSense`] and this module owns the wire codes. We always answer
//! in fixed format (response code 0x70): the control mode page reports D_SENSE=0, and fixed
//! format is what every initiator decodes.

use std::fmt;

/// The status byte of a SCSI Response PDU (SAM-5 5.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// The command completed.
    Good,
    /// The command failed; the sense data says why.
    CheckCondition,
    /// A pre-fetch found the range in cache. We never return it: we have no PRE-FETCH.
    ConditionMet,
    /// The logical unit cannot take the command now; the initiator retries later.
    Busy,
    /// A persistent reservation held by another I_T nexus forbids the command.
    ReservationConflict,
    /// The task set is full; the initiator retries later.
    TaskSetFull,
}

impl Status {
    /// The status code on the wire.
    pub fn code(self) -> u8 {
        match self {
            Status::Good => 0x00,
            Status::CheckCondition => 0x02,
            Status::ConditionMet => 0x04,
            Status::Busy => 0x08,
            Status::ReservationConflict => 0x18,
            Status::TaskSetFull => 0x28,
        }
    }
}

/// The sense key: the class of a failure (SPC-4 table 41).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SenseKey {
    /// No failure to report.
    NoSense,
    /// The logical unit is not ready (for example while the volume is unavailable).
    NotReady,
    /// An unrecoverable error in the medium: the backend could not read or write the data.
    MediumError,
    /// A failure of the target itself rather than of the medium.
    HardwareError,
    /// The CDB or the parameter data is wrong.
    IllegalRequest,
    /// Something changed that the initiator must learn about.
    UnitAttention,
    /// The target aborted the command.
    AbortedCommand,
    /// A compare (VERIFY with BYTCHK, COMPARE AND WRITE) found different data.
    Miscompare,
}

impl SenseKey {
    /// The sense key code on the wire.
    pub fn code(self) -> u8 {
        match self {
            SenseKey::NoSense => 0x0,
            SenseKey::NotReady => 0x2,
            SenseKey::MediumError => 0x3,
            SenseKey::HardwareError => 0x4,
            SenseKey::IllegalRequest => 0x5,
            SenseKey::UnitAttention => 0x6,
            SenseKey::AbortedCommand => 0xB,
            SenseKey::Miscompare => 0xE,
        }
    }
}

/// The additional sense code and qualifier (ASC/ASCQ, SPC-4 table D.1) this layer reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdditionalSense {
    /// 0x00/0x00.
    NoAdditionalSenseInformation,
    /// 0x04/0x00: the logical unit is not ready and says no more.
    LogicalUnitNotReady,
    /// 0x0C/0x00.
    WriteError,
    /// 0x11/0x00.
    UnrecoveredReadError,
    /// 0x1A/0x00.
    ParameterListLengthError,
    /// 0x1D/0x00.
    MiscompareDuringVerifyOperation,
    /// 0x20/0x00.
    InvalidCommandOperationCode,
    /// 0x21/0x00.
    LogicalBlockAddressOutOfRange,
    /// 0x24/0x00.
    InvalidFieldInCdb,
    /// 0x25/0x00: the command names a logical unit the target does not have.
    LogicalUnitNotSupported,
    /// 0x26/0x00.
    InvalidFieldInParameterList,
    /// 0x26/0x04.
    InvalidReleaseOfPersistentReservation,
    /// 0x29/0x03: a LOGICAL UNIT RESET or target reset happened; the iSCSI layer reports it
    /// as a unit attention to every session of the logical unit.
    BusDeviceResetFunctionOccurred,
    /// 0x39/0x00.
    SavingParametersNotSupported,
    /// 0x44/0x00.
    InternalTargetFailure,
    /// 0x47/0x05: PROTOCOL SERVICE CRC ERROR, what iSCSI answers a command whose data-out
    /// failed its data digest (RFC 7143 section 11.4.7.2).
    ProtocolServiceCrcError,
    /// 0x4B/0x00: the data-out of the command broke the transport protocol (DataSN, buffer
    /// offset, digest); the iSCSI layer fails the command with it.
    DataPhaseError,
    /// 0x55/0x04.
    InsufficientRegistrationResources,
}

impl AdditionalSense {
    /// The (ASC, ASCQ) pair on the wire.
    pub fn code(self) -> (u8, u8) {
        match self {
            AdditionalSense::NoAdditionalSenseInformation => (0x00, 0x00),
            AdditionalSense::LogicalUnitNotReady => (0x04, 0x00),
            AdditionalSense::WriteError => (0x0C, 0x00),
            AdditionalSense::UnrecoveredReadError => (0x11, 0x00),
            AdditionalSense::ParameterListLengthError => (0x1A, 0x00),
            AdditionalSense::MiscompareDuringVerifyOperation => (0x1D, 0x00),
            AdditionalSense::InvalidCommandOperationCode => (0x20, 0x00),
            AdditionalSense::LogicalBlockAddressOutOfRange => (0x21, 0x00),
            AdditionalSense::InvalidFieldInCdb => (0x24, 0x00),
            AdditionalSense::LogicalUnitNotSupported => (0x25, 0x00),
            AdditionalSense::InvalidFieldInParameterList => (0x26, 0x00),
            AdditionalSense::InvalidReleaseOfPersistentReservation => (0x26, 0x04),
            AdditionalSense::BusDeviceResetFunctionOccurred => (0x29, 0x03),
            AdditionalSense::SavingParametersNotSupported => (0x39, 0x00),
            AdditionalSense::InternalTargetFailure => (0x44, 0x00),
            AdditionalSense::ProtocolServiceCrcError => (0x47, 0x05),
            AdditionalSense::DataPhaseError => (0x4B, 0x00),
            AdditionalSense::InsufficientRegistrationResources => (0x55, 0x04),
        }
    }
}

/// Where in the CDB or the parameter list the bad field is (the sense-key specific field
/// pointer of SPC-4 4.5.2.4.2). Initiators print it, which makes a rejected CDB debuggable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FieldPointer {
    /// True when the field is in the CDB, false when it is in the parameter list.
    pub in_cdb: bool,
    /// The index of the byte holding the (first byte of the) field.
    pub byte_index: u16,
    /// The most significant bit of the field within that byte, when the field is not whole
    /// bytes.
    pub bit_index: Option<u8>,
}

/// The length of fixed-format sense data: 8 bytes of header and 10 additional bytes.
pub const SENSE_FIXED_LEN: usize = 18;

/// Sense data describing why a command ended in CHECK CONDITION.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sense {
    /// The class of failure.
    pub key: SenseKey,
    /// The precise failure.
    pub additional: AdditionalSense,
    /// The INFORMATION field: the failing LBA for medium errors, the offset of the first
    /// differing byte for miscompares. Fixed format holds 32 bits only; a larger value is
    /// dropped (reported as not valid) by [`Sense::information_u64`].
    pub information: Option<u32>,
    /// The sense-key specific field pointer, for ILLEGAL REQUEST.
    pub field_pointer: Option<FieldPointer>,
}

impl Sense {
    /// Sense data with a key and an additional sense code, nothing else.
    pub fn new(key: SenseKey, additional: AdditionalSense) -> Sense {
        Sense {
            key,
            additional,
            information: None,
            field_pointer: None,
        }
    }

    /// Sets the INFORMATION field.
    pub fn with_information(mut self, information: u32) -> Sense {
        self.information = Some(information);
        self
    }

    /// Sets the INFORMATION field from a 64-bit value, left not valid if it does not fit the
    /// 32 bits of fixed format (descriptor format would be needed, which we do not emit).
    pub fn information_u64(mut self, information: u64) -> Sense {
        self.information = u32::try_from(information).ok();
        self
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB, pointing at `byte_index` (and `bit_index`).
    pub fn invalid_field_in_cdb(byte_index: u16, bit_index: Option<u8>) -> Sense {
        Sense {
            field_pointer: Some(FieldPointer {
                in_cdb: true,
                byte_index,
                bit_index,
            }),
            ..Sense::new(SenseKey::IllegalRequest, AdditionalSense::InvalidFieldInCdb)
        }
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST, pointing at `byte_index` of the
    /// parameter data.
    pub fn invalid_field_in_parameter_list(byte_index: u16, bit_index: Option<u8>) -> Sense {
        Sense {
            field_pointer: Some(FieldPointer {
                in_cdb: false,
                byte_index,
                bit_index,
            }),
            ..Sense::new(
                SenseKey::IllegalRequest,
                AdditionalSense::InvalidFieldInParameterList,
            )
        }
    }

    /// ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR.
    pub fn parameter_list_length_error() -> Sense {
        Sense::new(
            SenseKey::IllegalRequest,
            AdditionalSense::ParameterListLengthError,
        )
    }

    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE, pointing at byte 0.
    pub fn invalid_opcode() -> Sense {
        Sense {
            field_pointer: Some(FieldPointer {
                in_cdb: true,
                byte_index: 0,
                bit_index: None,
            }),
            ..Sense::new(
                SenseKey::IllegalRequest,
                AdditionalSense::InvalidCommandOperationCode,
            )
        }
    }

    /// ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED: the iSCSI layer's answer to a command
    /// for a LUN other than 0.
    pub fn logical_unit_not_supported() -> Sense {
        Sense::new(
            SenseKey::IllegalRequest,
            AdditionalSense::LogicalUnitNotSupported,
        )
    }

    /// ABORTED COMMAND, DATA PHASE ERROR: the iSCSI layer's answer to a command whose
    /// data-out broke the protocol.
    pub fn data_phase_error() -> Sense {
        Sense::new(SenseKey::AbortedCommand, AdditionalSense::DataPhaseError)
    }

    /// ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR: the iSCSI layer's answer to a command
    /// whose data-out failed its digest (RFC 7143 section 7.8, ErrorRecoveryLevel 0).
    pub fn protocol_service_crc_error() -> Sense {
        Sense::new(
            SenseKey::AbortedCommand,
            AdditionalSense::ProtocolServiceCrcError,
        )
    }

    /// UNIT ATTENTION, BUS DEVICE RESET FUNCTION OCCURRED.
    pub fn reset_occurred() -> Sense {
        Sense::new(
            SenseKey::UnitAttention,
            AdditionalSense::BusDeviceResetFunctionOccurred,
        )
    }

    /// ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub fn lba_out_of_range() -> Sense {
        Sense::new(
            SenseKey::IllegalRequest,
            AdditionalSense::LogicalBlockAddressOutOfRange,
        )
    }

    /// MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION, with the offset of the first differing
    /// byte (from the start of the compared data-out) in INFORMATION.
    pub fn miscompare(offset_bytes: u64) -> Sense {
        Sense::new(
            SenseKey::Miscompare,
            AdditionalSense::MiscompareDuringVerifyOperation,
        )
        .information_u64(offset_bytes)
    }

    /// Encodes the sense data in fixed format (SPC-4 table 48), 18 bytes. The iSCSI layer
    /// prefixes these bytes with the 2-byte SenseLength of RFC 7143 11.4.7.2.
    pub fn to_fixed(&self) -> [u8; SENSE_FIXED_LEN] {
        let mut data = [0u8; SENSE_FIXED_LEN];
        // Byte 0: VALID (INFORMATION is meaningful) and response code 0x70 (current error).
        data[0] = 0x70;
        if let Some(information) = self.information {
            data[0] |= 0x80;
            data[3..7].copy_from_slice(&information.to_be_bytes());
        }
        data[2] = self.key.code();
        // The additional sense length counts the bytes after byte 7.
        data[7] = (SENSE_FIXED_LEN - 8) as u8;
        let (asc, ascq) = self.additional.code();
        data[12] = asc;
        data[13] = ascq;
        if let Some(pointer) = self.field_pointer {
            // SKSV, C/D, BPV and BIT POINTER, then the 16-bit field pointer.
            data[15] = 0x80;
            if pointer.in_cdb {
                data[15] |= 0x40;
            }
            if let Some(bit) = pointer.bit_index {
                assert!(bit < 8, "bit index {bit} is not in a byte");
                data[15] |= 0x08 | bit;
            }
            data[16..18].copy_from_slice(&pointer.byte_index.to_be_bytes());
        }
        data
    }
}

impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (asc, ascq) = self.additional.code();
        write!(
            f,
            "{:?} {:?} ({asc:#04x}/{ascq:#04x})",
            self.key, self.additional
        )?;
        if let Some(information) = self.information {
            write!(f, " information {information}")?;
        }
        if let Some(pointer) = self.field_pointer {
            let place = if pointer.in_cdb {
                "cdb"
            } else {
                "parameter list"
            };
            write!(f, " at {place} byte {}", pointer.byte_index)?;
            if let Some(bit) = pointer.bit_index {
                write!(f, " bit {bit}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the fixed-format layout byte by byte against SPC-4 table 48 for an INVALID
    /// FIELD IN CDB with a bit pointer, the richest case.
    #[test]
    fn fixed_format_invalid_field_in_cdb() {
        let sense = Sense::invalid_field_in_cdb(1, Some(5));
        let expected: [u8; 18] = [
            0x70,
            0,
            0x05,
            0,
            0,
            0,
            0,
            10,
            0,
            0,
            0,
            0,
            0x24,
            0x00,
            0,
            0xC8 | 5,
            0x00,
            0x01,
        ];
        assert_eq!(sense.to_fixed(), expected);
    }

    /// Checks that a miscompare carries VALID and the offset in INFORMATION, and that an
    /// offset too large for fixed format leaves VALID clear instead of truncating it.
    #[test]
    fn fixed_format_information() {
        let data = Sense::miscompare(0x0102_0304).to_fixed();
        assert_eq!(data[0], 0xF0);
        assert_eq!(data[2], 0x0E);
        assert_eq!(&data[3..7], &[1, 2, 3, 4]);
        assert_eq!((data[12], data[13]), (0x1D, 0x00));
        let data = Sense::miscompare(1 << 40).to_fixed();
        assert_eq!(data[0], 0x70);
        assert_eq!(&data[3..7], &[0, 0, 0, 0]);
    }

    #[test]
    fn status_codes() {
        let codes: Vec<u8> = [
            Status::Good,
            Status::CheckCondition,
            Status::ConditionMet,
            Status::Busy,
            Status::ReservationConflict,
            Status::TaskSetFull,
        ]
        .iter()
        .map(|status| status.code())
        .collect();
        assert_eq!(codes, vec![0x00, 0x02, 0x04, 0x08, 0x18, 0x28]);
    }
}
