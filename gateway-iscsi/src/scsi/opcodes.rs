//! REPORT SUPPORTED OPERATION CODES (SPC-4 6.35) and REPORT LUNS (SPC-4 6.33).
//!
//! The table below is the list of commands [`crate::scsi::parse`] accepts, with the CDB
//! usage bitmap of each: a bit is set where the field is implemented, that is read by the
//! parser or honored trivially (DPO and FUA: every write is durable), and the CONTROL byte's
//! NACA bit, which the parser checks. A test checks the table against the
//! parser, so the two cannot drift apart.

use crate::scsi::{cdb::OpcodeQuery, cdb::opcode::*, sense::Sense};

/// One supported command.
pub struct OpcodeInfo {
    /// The operation code.
    pub opcode: u8,
    /// The service action, for opcodes that have them.
    pub service_action: Option<u16>,
    /// The CDB usage data; its length is the CDB length.
    pub usage: &'static [u8],
}

const fn info(opcode: u8, service_action: Option<u16>, usage: &'static [u8]) -> OpcodeInfo {
    OpcodeInfo {
        opcode,
        service_action,
        usage,
    }
}

/// Every command we implement, in opcode order.
pub const SUPPORTED: &[OpcodeInfo] = &[
    info(TEST_UNIT_READY, None, &[0x00, 0, 0, 0, 0, 0x04]),
    info(REQUEST_SENSE, None, &[0x03, 0x01, 0, 0, 0xFF, 0x04]),
    info(READ_6, None, &[0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0x04]),
    info(WRITE_6, None, &[0x0A, 0x1F, 0xFF, 0xFF, 0xFF, 0x04]),
    info(INQUIRY, None, &[0x12, 0x03, 0xFF, 0xFF, 0xFF, 0x04]),
    info(MODE_SELECT_6, None, &[0x15, 0x11, 0, 0, 0xFF, 0x04]),
    info(MODE_SENSE_6, None, &[0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0x04]),
    info(
        READ_CAPACITY_10,
        None,
        &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0x04],
    ),
    info(
        READ_10,
        None,
        &[0x28, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x04],
    ),
    info(
        WRITE_10,
        None,
        &[0x2A, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x04],
    ),
    info(
        WRITE_AND_VERIFY_10,
        None,
        &[0x2E, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x04],
    ),
    info(
        VERIFY_10,
        None,
        &[0x2F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x04],
    ),
    info(
        SYNCHRONIZE_CACHE_10,
        None,
        &[0x35, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x04],
    ),
    info(
        WRITE_SAME_10,
        None,
        &[0x41, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x04],
    ),
    info(UNMAP, None, &[0x42, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04]),
    info(
        MODE_SELECT_10,
        None,
        &[0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04],
    ),
    info(
        MODE_SENSE_10,
        None,
        &[0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0x04],
    ),
    info(PERSISTENT_RESERVE_IN, Some(0x00), PR_IN_USAGE),
    info(PERSISTENT_RESERVE_IN, Some(0x01), PR_IN_USAGE),
    info(PERSISTENT_RESERVE_IN, Some(0x02), PR_IN_USAGE),
    info(PERSISTENT_RESERVE_IN, Some(0x03), PR_IN_USAGE),
    info(PERSISTENT_RESERVE_OUT, Some(0x00), PR_OUT_USAGE),
    info(PERSISTENT_RESERVE_OUT, Some(0x01), PR_OUT_USAGE),
    info(PERSISTENT_RESERVE_OUT, Some(0x02), PR_OUT_USAGE),
    info(PERSISTENT_RESERVE_OUT, Some(0x03), PR_OUT_USAGE),
    info(PERSISTENT_RESERVE_OUT, Some(0x04), PR_OUT_USAGE),
    info(PERSISTENT_RESERVE_OUT, Some(0x05), PR_OUT_USAGE),
    info(PERSISTENT_RESERVE_OUT, Some(0x06), PR_OUT_USAGE),
    info(READ_16, None, &BLOCK_16_USAGE(READ_16, 0xF8)),
    info(COMPARE_AND_WRITE, None, &CAW_USAGE),
    info(WRITE_16, None, &BLOCK_16_USAGE(WRITE_16, 0xF8)),
    info(
        WRITE_AND_VERIFY_16,
        None,
        &BLOCK_16_USAGE(WRITE_AND_VERIFY_16, 0xF6),
    ),
    info(VERIFY_16, None, &BLOCK_16_USAGE(VERIFY_16, 0xF6)),
    info(
        SYNCHRONIZE_CACHE_16,
        None,
        &BLOCK_16_USAGE(SYNCHRONIZE_CACHE_16, 0x00),
    ),
    info(WRITE_SAME_16, None, &BLOCK_16_USAGE(WRITE_SAME_16, 0xFF)),
    info(SERVICE_ACTION_IN_16, Some(SA_READ_CAPACITY_16), &RC16_USAGE),
    info(
        REPORT_LUNS,
        None,
        &[0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04],
    ),
    info(
        MAINTENANCE_IN,
        Some(SA_REPORT_SUPPORTED_OPERATION_CODES),
        &[
            0xA3, 0x1F, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04,
        ],
    ),
    info(
        READ_12,
        None,
        &[
            0xA8, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04,
        ],
    ),
    info(
        WRITE_12,
        None,
        &[
            0xAA, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04,
        ],
    ),
];

const PR_IN_USAGE: &[u8] = &[0x5E, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04];
const PR_OUT_USAGE: &[u8] = &[0x5F, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x04];
const CAW_USAGE: [u8; 16] = [
    0x89, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0, 0x04,
];
const RC16_USAGE: [u8; 16] = [
    0x9E, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04,
];

/// The usage data of a 16-byte block command: opcode, flags byte, 8-byte LBA, 4-byte length,
/// group (ignored), CONTROL.
#[allow(non_snake_case)]
const fn BLOCK_16_USAGE(opcode: u8, flags: u8) -> [u8; 16] {
    [
        opcode, flags, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0,
        0x04,
    ]
}

/// The REPORT SUPPORTED OPERATION CODES parameter data, before truncation to the
/// allocation length.
pub fn report_supported_operation_codes(
    query: OpcodeQuery,
    timeouts: bool,
) -> Result<Vec<u8>, Sense> {
    let has_service_actions = |opcode: u8| {
        SUPPORTED
            .iter()
            .any(|info| info.opcode == opcode && info.service_action.is_some())
    };
    let (opcode, service_action) = match query {
        OpcodeQuery::All => return Ok(all_commands(timeouts)),
        OpcodeQuery::Opcode { opcode } => {
            if has_service_actions(opcode) {
                return Err(Sense::invalid_field_in_cdb(2, Some(2)));
            }
            (opcode, None)
        }
        OpcodeQuery::OpcodeServiceAction {
            opcode,
            service_action,
        } => {
            if !has_service_actions(opcode) && is_supported(opcode) {
                return Err(Sense::invalid_field_in_cdb(2, Some(2)));
            }
            (opcode, Some(service_action))
        }
        OpcodeQuery::OpcodeMaybeServiceAction {
            opcode,
            service_action,
        } => (
            opcode,
            has_service_actions(opcode).then_some(service_action),
        ),
    };
    let found = SUPPORTED
        .iter()
        .find(|info| info.opcode == opcode && info.service_action == service_action);
    let mut data = Vec::with_capacity(4 + 16 + 12);
    let Some(info) = found else {
        // SUPPORT 001b: not supported; no usage data.
        data.extend_from_slice(&[0x00, 0x01, 0x00, 0x00]);
        return Ok(data);
    };
    // CTDP when timeouts are asked for; SUPPORT 011b: supported as the standard says.
    data.push(0);
    data.push(if timeouts { 0x83 } else { 0x03 });
    data.extend_from_slice(&(info.usage.len() as u16).to_be_bytes());
    data.extend_from_slice(info.usage);
    if timeouts {
        data.extend_from_slice(&timeouts_descriptor());
    }
    Ok(data)
}

fn is_supported(opcode: u8) -> bool {
    SUPPORTED.iter().any(|info| info.opcode == opcode)
}

fn all_commands(timeouts: bool) -> Vec<u8> {
    let mut descriptors = Vec::with_capacity(SUPPORTED.len() * 20);
    for info in SUPPORTED {
        descriptors.push(info.opcode);
        descriptors.push(0);
        descriptors.extend_from_slice(&info.service_action.unwrap_or(0).to_be_bytes());
        descriptors.push(0);
        // CTDP (bit 1), SERVACTV (bit 0).
        descriptors.push(u8::from(timeouts) << 1 | u8::from(info.service_action.is_some()));
        descriptors.extend_from_slice(&(info.usage.len() as u16).to_be_bytes());
        if timeouts {
            descriptors.extend_from_slice(&timeouts_descriptor());
        }
    }
    let mut data = Vec::with_capacity(4 + descriptors.len());
    data.extend_from_slice(&(descriptors.len() as u32).to_be_bytes());
    data.extend_from_slice(&descriptors);
    data
}

/// A command timeouts descriptor (SPC-4 6.35.4) with no timeouts reported: the time a
/// command takes depends on the cluster, not on the command.
fn timeouts_descriptor() -> [u8; 12] {
    [0x00, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// REPORT LUNS parameter data (SPC-4 6.33): LUN 0 alone, or no LUN when only well known
/// logical units are asked for.
pub fn report_luns(well_known_only: bool) -> Vec<u8> {
    if well_known_only {
        return vec![0; 8];
    }
    let mut data = vec![0, 0, 0, 8, 0, 0, 0, 0];
    data.extend_from_slice(&[0; 8]); // LUN 0, peripheral device addressing.
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::cdb::{cdb_length, parse};

    /// Every table entry parses when its CDB is its own usage bitmap with the
    /// bits the parser rejects cleared, and its length matches the opcode's group.
    #[test]
    fn table_matches_parser() {
        for info in SUPPORTED {
            assert_eq!(
                cdb_length(info.opcode),
                Some(info.usage.len()),
                "{:#04x}",
                info.opcode
            );
            assert_eq!(info.usage[0], info.opcode);
            let mut cdb = vec![0u8; info.usage.len()];
            cdb[0] = info.opcode;
            if let Some(service_action) = info.service_action {
                cdb[1] = service_action as u8;
            }
            if info.opcode == PERSISTENT_RESERVE_OUT {
                cdb[2] = 0x01;
                cdb[8] = 24;
            }
            assert!(
                parse(&cdb).is_ok(),
                "{:#04x} {:?}",
                info.opcode,
                info.service_action
            );
        }
        let mut sorted: Vec<(u8, Option<u16>)> = SUPPORTED
            .iter()
            .map(|info| (info.opcode, info.service_action))
            .collect();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), SUPPORTED.len());
    }

    #[test]
    fn one_command_report() {
        let data = report_supported_operation_codes(OpcodeQuery::Opcode { opcode: READ_10 }, false)
            .expect("READ (10) has no service actions");
        assert_eq!(&data[..4], &[0x00, 0x03, 0x00, 10]);
        assert_eq!(&data[4..], SUPPORTED[8].usage);
        let query = OpcodeQuery::OpcodeServiceAction {
            opcode: SERVICE_ACTION_IN_16,
            service_action: 0x10,
        };
        let data = report_supported_operation_codes(query, true).expect("RC16");
        assert_eq!(&data[..4], &[0x00, 0x83, 0x00, 16]);
        assert_eq!(data.len(), 4 + 16 + 12);
        let missing = report_supported_operation_codes(OpcodeQuery::Opcode { opcode: 0x04 }, false)
            .expect("unsupported opcodes are reported, not refused");
        assert_eq!(missing, vec![0, 1, 0, 0]);
        let refused = report_supported_operation_codes(
            OpcodeQuery::Opcode {
                opcode: PERSISTENT_RESERVE_IN,
            },
            false,
        );
        assert_eq!(refused, Err(Sense::invalid_field_in_cdb(2, Some(2))));
        let all = report_supported_operation_codes(OpcodeQuery::All, false).expect("all");
        assert_eq!(all.len(), 4 + 8 * SUPPORTED.len());
    }

    /// REPORT LUNS, hand-assembled.
    #[test]
    fn report_luns_layout() {
        assert_eq!(
            report_luns(false),
            vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(report_luns(true), vec![0; 8]);
    }
}
