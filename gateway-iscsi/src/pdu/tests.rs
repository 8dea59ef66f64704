//! Codec tests: hand-checked byte layouts, digests, error classification, and property tests
//! (round trip of every generated PDU; arbitrary and mutated frames never panic).

#![allow(clippy::unwrap_used)]

use proptest::{collection::vec, prelude::*};

use super::*;

fn encode(pdu: &Pdu, digests: Digests) -> Vec<u8> {
    let mut out = Vec::new();
    pdu.encode(digests, &mut out);
    assert_eq!(out.len(), pdu.encoded_len(digests));
    out
}

fn round_trip(pdu: &Pdu, digests: Digests) {
    let frame = encode(pdu, digests);
    let bhs: &[u8; BHS_LEN] = frame.first_chunk().unwrap();
    assert_eq!(pdu_len(bhs, digests).unwrap(), frame.len());
    let decoded = Pdu::decode(&frame, digests, MAX_DATA_SEGMENT_LEN).unwrap();
    assert_eq!(&decoded, pdu);
    // Canonical: re-encoding the decoded PDU gives the same bytes.
    assert_eq!(encode(&decoded, digests), frame);
}

fn header(frame: &[u8]) -> [u8; BHS_LEN] {
    *frame.first_chunk().unwrap()
}

#[test]
fn login_request_layout() {
    let pdu = Pdu::LoginRequest(LoginRequest {
        transit: true,
        cont: false,
        csg: Stage::Operational,
        nsg: Stage::FullFeature,
        version_max: 0,
        version_min: 0,
        isid: Isid([0x00, 0x02, 0x3d, 0x00, 0x00, 0x01]),
        tsih: 0,
        itt: Itt(0x0102_0304),
        cid: 0x0506,
        cmd_sn: 0x0a0b_0c0d,
        exp_stat_sn: 0x1112_1314,
        data: b"a=b\0c=d\0".to_vec(),
    });
    #[rustfmt::skip]
    let expected: [u8; BHS_LEN] = [
        0x43, 0x87, 0x00, 0x00, // I + opcode 3; T, CSG=1, NSG=3; version max, min
        0x00, 0x00, 0x00, 0x08, // TotalAHSLength; DataSegmentLength = 8
        0x00, 0x02, 0x3d, 0x00, 0x00, 0x01, 0x00, 0x00, // ISID; TSIH
        0x01, 0x02, 0x03, 0x04, // ITT
        0x05, 0x06, 0x00, 0x00, // CID; reserved
        0x0a, 0x0b, 0x0c, 0x0d, // CmdSN
        0x11, 0x12, 0x13, 0x14, // ExpStatSN
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let frame = encode(&pdu, Digests::NONE);
    assert_eq!(header(&frame), expected);
    assert_eq!(&frame[BHS_LEN..], b"a=b\0c=d\0");
    round_trip(&pdu, Digests::NONE);
}

#[test]
fn login_response_layout() {
    let pdu = Pdu::LoginResponse(LoginResponse {
        transit: false,
        cont: true,
        csg: Stage::Security,
        nsg: Stage::Operational,
        version_max: 0,
        version_active: 0,
        isid: Isid([0x40, 1, 2, 3, 4, 5]),
        tsih: 0x1234,
        itt: Itt(7),
        stat_sn: 0x0000_0100,
        exp_cmd_sn: 0x0000_0200,
        max_cmd_sn: 0x0000_0300,
        status: LoginStatus::AUTHENTICATION_FAILURE,
        data: b"x=y\0z".to_vec(),
    });
    #[rustfmt::skip]
    let expected: [u8; BHS_LEN] = [
        0x23, 0x41, 0x00, 0x00, // opcode; C, CSG=0, NSG=1; version max, active
        0x00, 0x00, 0x00, 0x05, // DataSegmentLength = 5
        0x40, 0x01, 0x02, 0x03, 0x04, 0x05, 0x12, 0x34, // ISID; TSIH
        0x00, 0x00, 0x00, 0x07, // ITT
        0x00, 0x00, 0x00, 0x00, // reserved
        0x00, 0x00, 0x01, 0x00, // StatSN
        0x00, 0x00, 0x02, 0x00, // ExpCmdSN
        0x00, 0x00, 0x03, 0x00, // MaxCmdSN
        0x02, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // Status-Class, Status-Detail
    ];
    let frame = encode(&pdu, Digests::NONE);
    assert_eq!(header(&frame), expected);
    // Five data bytes, padded with three zeros to a 4-byte boundary.
    assert_eq!(&frame[BHS_LEN..], b"x=y\0z\0\0\0");
    round_trip(&pdu, Digests::NONE);
}

#[test]
fn scsi_command_layout_with_extended_cdb_and_bidi_ahs() {
    let mut cdb = [0u8; CDB_LEN];
    cdb[0] = 0x7f; // variable-length CDB
    cdb[15] = 0xaa;
    let pdu = Pdu::ScsiCommand(ScsiCommand {
        immediate: false,
        fin: true,
        read: true,
        write: true,
        attr: TaskAttr::Ordered,
        lun: Lun(0x0001_0000_0000_0000),
        itt: Itt(0xdead_beef),
        expected_data_len: 0x0001_0000,
        cmd_sn: 9,
        exp_stat_sn: 10,
        cdb,
        extended_cdb: vec![0xb0, 0xb1],
        bidi_read_len: Some(0x200),
        data: vec![1, 2, 3, 4, 5],
    });
    #[rustfmt::skip]
    let expected: [u8; BHS_LEN] = [
        0x01, 0xe2, 0x00, 0x00, // opcode; F R W, ATTR=2
        0x04, 0x00, 0x00, 0x05, // TotalAHSLength = 4 words (8 + 8 bytes); DataSegmentLength = 5
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // LUN
        0xde, 0xad, 0xbe, 0xef, // ITT
        0x00, 0x01, 0x00, 0x00, // Expected Data Transfer Length
        0x00, 0x00, 0x00, 0x09, // CmdSN
        0x00, 0x00, 0x00, 0x0a, // ExpStatSN
        0x7f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xaa, // CDB
    ];
    #[rustfmt::skip]
    let expected_ahs: [u8; 12] = [
        0x00, 0x03, 0x01, 0x00, 0xb0, 0xb1, 0x00, 0x00, // extended CDB: length 3 (18-byte CDB)
        0x00, 0x05, 0x02, 0x00, // bidirectional read length AHS header...
    ];
    let frame = encode(&pdu, Digests::NONE);
    assert_eq!(header(&frame), expected);
    assert_eq!(&frame[48..60], &expected_ahs);
    assert_eq!(&frame[60..64], &[0x00, 0x00, 0x02, 0x00]); // ...and its 4-byte length
    assert_eq!(&frame[64..], &[1, 2, 3, 4, 5, 0, 0, 0]);
    let Pdu::ScsiCommand(command) = &pdu else {
        unreachable!()
    };
    assert_eq!(command.full_cdb().len(), 18);
    round_trip(&pdu, Digests::NONE);
    round_trip(&pdu, Digests::BOTH);
}

#[test]
fn data_in_layout_with_status() {
    let pdu = Pdu::DataIn(DataIn {
        fin: true,
        ack: false,
        lun: Lun(0),
        itt: Itt(0x11),
        ttt: Ttt::RESERVED,
        exp_cmd_sn: 0x21,
        max_cmd_sn: 0x40,
        data_sn: 3,
        buffer_offset: 0x3000,
        status: Some(DataInStatus {
            status: 0,
            stat_sn: 0x77,
            residual: Residual::Underflow(0x800),
        }),
        data: vec![0xab; 4],
    });
    #[rustfmt::skip]
    let expected: [u8; BHS_LEN] = [
        0x25, 0x83, 0x00, 0x00, // opcode; F U S; reserved; status GOOD
        0x00, 0x00, 0x00, 0x04, // DataSegmentLength = 4
        0, 0, 0, 0, 0, 0, 0, 0, // LUN
        0x00, 0x00, 0x00, 0x11, // ITT
        0xff, 0xff, 0xff, 0xff, // TTT
        0x00, 0x00, 0x00, 0x77, // StatSN
        0x00, 0x00, 0x00, 0x21, // ExpCmdSN
        0x00, 0x00, 0x00, 0x40, // MaxCmdSN
        0x00, 0x00, 0x00, 0x03, // DataSN
        0x00, 0x00, 0x30, 0x00, // Buffer Offset
        0x00, 0x00, 0x08, 0x00, // Residual Count
    ];
    let frame = encode(&pdu, Digests::NONE);
    assert_eq!(header(&frame), expected);
    round_trip(&pdu, Digests::NONE);
    round_trip(&pdu, Digests::BOTH);
}

#[test]
fn r2t_layout() {
    let pdu = Pdu::R2t(R2t {
        lun: Lun(0x0002_0000_0000_0000),
        itt: Itt(1),
        ttt: Ttt(2),
        stat_sn: 3,
        exp_cmd_sn: 4,
        max_cmd_sn: 5,
        r2t_sn: 6,
        buffer_offset: 0x0001_0000,
        desired_len: 0x0004_0000,
    });
    #[rustfmt::skip]
    let expected: [u8; BHS_LEN] = [
        0x31, 0x80, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x02, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0, 6,
        0x00, 0x01, 0x00, 0x00,
        0x00, 0x04, 0x00, 0x00,
    ];
    let frame = encode(&pdu, Digests::NONE);
    assert_eq!(frame, expected);
    round_trip(&pdu, Digests::NONE);
}

#[test]
fn scsi_response_layout_with_sense() {
    let sense = vec![
        0x70, 0, 0x05, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x20, 0x00, 0, 0, 0, 0,
    ];
    let pdu = Pdu::ScsiResponse(ScsiResponse {
        bidi_read_residual: Residual::None,
        residual: Residual::Overflow(0x10),
        response: ScsiResponse::COMMAND_COMPLETED,
        status: 0x02, // CHECK CONDITION
        itt: Itt(0x99),
        snack_tag: 0,
        stat_sn: 0x100,
        exp_cmd_sn: 0x101,
        max_cmd_sn: 0x120,
        exp_data_sn: 0,
        sense: sense.clone(),
        response_data: Vec::new(),
    });
    #[rustfmt::skip]
    let expected: [u8; BHS_LEN] = [
        0x21, 0x84, 0x00, 0x02, // opcode; 1 + O; response; status
        0x00, 0x00, 0x00, 0x14, // DataSegmentLength = 2 + 18
        0, 0, 0, 0, 0, 0, 0, 0,
        0x00, 0x00, 0x00, 0x99, // ITT
        0x00, 0x00, 0x00, 0x00, // SNACK Tag
        0x00, 0x00, 0x01, 0x00, // StatSN
        0x00, 0x00, 0x01, 0x01, // ExpCmdSN
        0x00, 0x00, 0x01, 0x20, // MaxCmdSN
        0x00, 0x00, 0x00, 0x00, // ExpDataSN
        0x00, 0x00, 0x00, 0x00, // Bidirectional Read Residual Count (reserved)
        0x00, 0x00, 0x00, 0x10, // Residual Count
    ];
    let frame = encode(&pdu, Digests::NONE);
    assert_eq!(header(&frame), expected);
    assert_eq!(&frame[48..50], &[0x00, 0x12]); // SenseLength = 18
    assert_eq!(&frame[50..68], sense.as_slice());
    assert_eq!(frame.len(), 48 + 20);
    round_trip(&pdu, Digests::NONE);
}

#[test]
fn every_opcode_round_trips_with_and_without_digests() {
    let samples = vec![
        Pdu::NopOut(NopOut {
            immediate: true,
            itt: Itt(1),
            ttt: Ttt::RESERVED,
            data: vec![9; 3],
            ..NopOut::default()
        }),
        Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: TaskMgmtFunction::AbortTask,
            lun: Lun(1 << 48),
            itt: Itt(2),
            referenced_task_tag: Itt(1),
            cmd_sn: 3,
            exp_stat_sn: 4,
            ref_cmd_sn: 2,
            exp_data_sn: 0,
        }),
        Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: false,
            function: TaskMgmtFunction::Unknown(0x42),
            lun: Lun(0),
            itt: Itt(2),
            referenced_task_tag: Itt::RESERVED,
            cmd_sn: 3,
            exp_stat_sn: 4,
            ref_cmd_sn: 0,
            exp_data_sn: 0,
        }),
        Pdu::TextRequest(TextRequest {
            fin: true,
            itt: Itt(5),
            ttt: Ttt::RESERVED,
            data: b"SendTargets=All\0".to_vec(),
            ..TextRequest::default()
        }),
        Pdu::DataOut(DataOut {
            fin: true,
            itt: Itt(6),
            ttt: Ttt(7),
            data_sn: 1,
            buffer_offset: 8192,
            data: vec![0x5a; 8192],
            ..DataOut::default()
        }),
        Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: LogoutReason::CloseSession,
            itt: Itt(8),
            cid: 1,
            cmd_sn: 9,
            exp_stat_sn: 10,
        }),
        Pdu::SnackRequest(SnackRequest {
            snack_type: SnackType::Status,
            lun: Lun(0),
            itt: Itt::RESERVED,
            ttt: Ttt::RESERVED,
            exp_stat_sn: 1,
            beg_run: 2,
            run_length: 0,
        }),
        Pdu::NopIn(NopIn {
            itt: Itt::RESERVED,
            ttt: Ttt(1),
            stat_sn: 5,
            ..NopIn::default()
        }),
        Pdu::TaskMgmtResponse(TaskMgmtResponse {
            response: TaskMgmtResponseCode::FunctionNotSupported,
            itt: Itt(2),
            stat_sn: 1,
            exp_cmd_sn: 2,
            max_cmd_sn: 3,
        }),
        Pdu::TextResponse(TextResponse {
            fin: false,
            cont: true,
            itt: Itt(5),
            ttt: Ttt(0x10),
            data: b"TargetName=iqn.x\0".to_vec(),
            ..TextResponse::default()
        }),
        Pdu::LogoutResponse(LogoutResponse {
            response: LogoutResponseCode::Closed,
            itt: Itt(8),
            stat_sn: 1,
            exp_cmd_sn: 2,
            max_cmd_sn: 3,
            time2wait: 2,
            time2retain: 20,
        }),
        Pdu::AsyncMessage(AsyncMessage {
            event: 1,
            parameter3: 5,
            sense: vec![1, 2],
            event_data: vec![3],
            ..AsyncMessage::default()
        }),
        Pdu::Reject(Reject {
            reason: reject_reason::PROTOCOL_ERROR,
            stat_sn: 1,
            header: vec![0x55; BHS_LEN],
            ..Reject::default()
        }),
        Pdu::DataIn(DataIn {
            fin: false,
            ack: true,
            itt: Itt(1),
            ttt: Ttt(2),
            data: vec![1],
            ..DataIn::default()
        }),
        Pdu::ScsiResponse(ScsiResponse {
            response_data: vec![1, 2, 3],
            bidi_read_residual: Residual::Underflow(4),
            ..ScsiResponse::default()
        }),
    ];
    let mut opcodes: Vec<u8> = samples.iter().map(Pdu::opcode).collect();
    opcodes.sort_unstable();
    opcodes.dedup();
    // With the layout tests above, every opcode is covered.
    assert_eq!(opcodes.len(), 14);
    for pdu in &samples {
        for digests in [
            Digests::NONE,
            Digests::BOTH,
            Digests {
                header: true,
                data: false,
            },
        ] {
            round_trip(pdu, digests);
        }
    }
}

fn sample_write() -> Pdu {
    Pdu::DataOut(DataOut {
        fin: true,
        itt: Itt(3),
        ttt: Ttt(4),
        data: b"hello".to_vec(),
        ..DataOut::default()
    })
}

#[test]
fn digests_sit_little_endian_after_header_and_padded_data() {
    let frame = encode(&sample_write(), Digests::BOTH);
    assert_eq!(frame.len(), 48 + 4 + 8 + 4);
    assert_eq!(frame[48..52], crc32c(&frame[..48]).to_le_bytes());
    assert_eq!(&frame[52..60], b"hello\0\0\0");
    assert_eq!(frame[60..64], crc32c(&frame[52..60]).to_le_bytes());
}

#[test]
fn empty_data_segment_has_no_data_digest() {
    let pdu = Pdu::NopIn(NopIn::default());
    assert_eq!(encode(&pdu, Digests::BOTH).len(), 48 + 4);
    round_trip(&pdu, Digests::BOTH);
}

#[test]
fn wrong_header_digest_drops_the_connection() {
    let mut frame = encode(&sample_write(), Digests::BOTH);
    frame[48] ^= 1;
    let err = Pdu::decode(&frame, Digests::BOTH, 8192).unwrap_err();
    assert!(
        matches!(
            err,
            PduError::Disconnect(DisconnectWhy::HeaderDigest { .. })
        ),
        "{err}"
    );
    // A corrupted header field is caught the same way.
    let mut frame = encode(&sample_write(), Digests::BOTH);
    frame[20] ^= 0x80;
    let err = Pdu::decode(&frame, Digests::BOTH, 8192).unwrap_err();
    assert!(
        matches!(
            err,
            PduError::Disconnect(DisconnectWhy::HeaderDigest { .. })
        ),
        "{err}"
    );
}

#[test]
fn wrong_data_digest_rejects_with_reason_2() {
    let mut frame = encode(&sample_write(), Digests::BOTH);
    frame[53] ^= 0x20; // "hello" -> "hEllo"
    let err = Pdu::decode(&frame, Digests::BOTH, 8192).unwrap_err();
    let PduError::Reject {
        reason,
        header: bad_header,
        why,
    } = err
    else {
        panic!("{err}")
    };
    assert_eq!(reason, reject_reason::DATA_DIGEST_ERROR);
    assert_eq!(bad_header, header(&frame));
    assert!(matches!(why, RejectWhy::DataDigest { .. }));
    // Padding is covered by the digest too.
    let mut frame = encode(&sample_write(), Digests::BOTH);
    frame[59] = 1;
    assert!(matches!(
        Pdu::decode(&frame, Digests::BOTH, 8192),
        Err(PduError::Reject {
            reason: reject_reason::DATA_DIGEST_ERROR,
            ..
        })
    ));
}

#[test]
fn unknown_opcode_rejects_with_command_not_supported() {
    for opcode in [0x07u8, 0x1c, 0x3c, 0x2f] {
        let mut frame = [0u8; BHS_LEN];
        frame[0] = opcode;
        let err = Pdu::decode(&frame, Digests::NONE, 8192).unwrap_err();
        assert_eq!(
            err,
            PduError::Reject {
                reason: reject_reason::COMMAND_NOT_SUPPORTED,
                header: frame,
                why: RejectWhy::UnsupportedOpcode { opcode },
            }
        );
    }
}

#[test]
fn claimed_length_beyond_limit_disconnects_before_reading() {
    let mut bhs = [0u8; BHS_LEN];
    bhs[0] = opcode::DATA_OUT;
    bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    assert_eq!(pdu_len(&bhs, Digests::NONE).unwrap(), 48 + (1 << 24));
    assert_eq!(
        pdu_len_within(&bhs, Digests::NONE, 8192).unwrap_err(),
        PduError::Disconnect(DisconnectWhy::DataSegmentTooLong {
            len: 0x00ff_ffff,
            max: 8192
        })
    );
    // decode refuses too, with only the header in hand.
    assert!(matches!(
        Pdu::decode(&bhs, Digests::NONE, 8192),
        Err(PduError::Disconnect(
            DisconnectWhy::DataSegmentTooLong { .. }
        ))
    ));
}

#[test]
fn frame_length_must_match_header() {
    let frame = encode(&sample_write(), Digests::NONE);
    assert!(matches!(
        Pdu::decode(&frame[..frame.len() - 1], Digests::NONE, 8192),
        Err(PduError::Disconnect(DisconnectWhy::LengthMismatch { .. }))
    ));
    assert!(matches!(
        Pdu::decode(&frame[..47], Digests::NONE, 8192),
        Err(PduError::Disconnect(DisconnectWhy::Truncated { len: 47 }))
    ));
    // The same frame read as if digests were on is framed wrongly.
    assert!(matches!(
        Pdu::decode(&frame, Digests::BOTH, 8192),
        Err(PduError::Disconnect(DisconnectWhy::LengthMismatch { .. }))
    ));
}

#[test]
fn invalid_fields_reject_with_invalid_pdu_field() {
    // Data-In with S but not F.
    let mut frame = encode(&Pdu::DataIn(DataIn::default()), Digests::NONE);
    frame[1] = 0x01;
    assert!(matches!(
        Pdu::decode(&frame, Digests::NONE, 8192),
        Err(PduError::Reject {
            reason: reject_reason::INVALID_PDU_FIELD,
            ..
        })
    ));
    // SCSI Command with a reserved task attribute.
    let mut frame = encode(&Pdu::ScsiCommand(ScsiCommand::default()), Digests::NONE);
    frame[1] = 0x87;
    assert!(matches!(
        Pdu::decode(&frame, Digests::NONE, 8192),
        Err(PduError::Reject {
            reason: reject_reason::INVALID_PDU_FIELD,
            ..
        })
    ));
    // SCSI Command with an AHS of unknown type.
    let mut frame = encode(&Pdu::ScsiCommand(ScsiCommand::default()), Digests::NONE);
    frame[4] = 1;
    frame.extend_from_slice(&[0x00, 0x01, 0x09, 0x00]);
    assert!(matches!(
        Pdu::decode(&frame, Digests::NONE, 8192),
        Err(PduError::Reject {
            reason: reject_reason::INVALID_PDU_FIELD,
            ..
        })
    ));
    // SCSI Response whose SenseLength overruns the data segment.
    let pdu = Pdu::ScsiResponse(ScsiResponse {
        sense: vec![1, 2, 3],
        ..ScsiResponse::default()
    });
    let mut frame = encode(&pdu, Digests::NONE);
    frame[49] = 4;
    assert!(matches!(
        Pdu::decode(&frame, Digests::NONE, 8192),
        Err(PduError::Reject {
            reason: reject_reason::INVALID_PDU_FIELD,
            ..
        })
    ));
}

/// Builds a valid PDU of kind `kind % 18` from raw random material.
#[allow(clippy::too_many_arguments)]
fn build_pdu(
    kind: u8,
    w: [u32; 10],
    b: [bool; 6],
    cdb: [u8; CDB_LEN],
    ext: Vec<u8>,
    data: Vec<u8>,
    sense: Vec<u8>,
    lun: u64,
) -> Pdu {
    let stage = |bits: u32| Stage::from_bits(bits as u8);
    let residual = |selector: u32, count: u32| match selector % 3 {
        0 => Residual::None,
        1 => Residual::Underflow(count),
        _ => Residual::Overflow(count),
    };
    let small = |value: u32| value as u16;
    match kind % 18 {
        0 => Pdu::NopOut(NopOut {
            immediate: b[0],
            lun: Lun(lun),
            itt: Itt(w[0]),
            ttt: Ttt(w[1]),
            cmd_sn: w[2],
            exp_stat_sn: w[3],
            data,
        }),
        1 => Pdu::ScsiCommand(ScsiCommand {
            immediate: b[0],
            fin: b[1],
            read: b[2],
            write: b[3],
            attr: TaskAttr::from_bits((w[9] % 5) as u8).unwrap(),
            lun: Lun(lun),
            itt: Itt(w[0]),
            expected_data_len: w[1],
            cmd_sn: w[2],
            exp_stat_sn: w[3],
            cdb,
            extended_cdb: ext,
            bidi_read_len: b[4].then_some(w[4]),
            data,
        }),
        2 => Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: b[0],
            function: TaskMgmtFunction::from_bits((w[9] % 128) as u8),
            lun: Lun(lun),
            itt: Itt(w[0]),
            referenced_task_tag: Itt(w[1]),
            cmd_sn: w[2],
            exp_stat_sn: w[3],
            ref_cmd_sn: w[4],
            exp_data_sn: w[5],
        }),
        3 => Pdu::LoginRequest(LoginRequest {
            transit: b[0],
            cont: b[1],
            csg: stage(w[8]),
            nsg: stage(w[9]),
            version_max: w[4] as u8,
            version_min: w[5] as u8,
            isid: Isid(cdb[..6].try_into().unwrap()),
            tsih: small(w[6]),
            itt: Itt(w[0]),
            cid: small(w[7]),
            cmd_sn: w[2],
            exp_stat_sn: w[3],
            data,
        }),
        4 => Pdu::TextRequest(TextRequest {
            immediate: b[0],
            fin: b[1],
            cont: b[2],
            lun: Lun(lun),
            itt: Itt(w[0]),
            ttt: Ttt(w[1]),
            cmd_sn: w[2],
            exp_stat_sn: w[3],
            data,
        }),
        5 => Pdu::DataOut(DataOut {
            fin: b[0],
            lun: Lun(lun),
            itt: Itt(w[0]),
            ttt: Ttt(w[1]),
            exp_stat_sn: w[2],
            data_sn: w[3],
            buffer_offset: w[4],
            data,
        }),
        6 => Pdu::LogoutRequest(LogoutRequest {
            immediate: b[0],
            reason: [
                LogoutReason::CloseSession,
                LogoutReason::CloseConnection,
                LogoutReason::RemoveConnectionForRecovery,
            ][(w[9] % 3) as usize],
            itt: Itt(w[0]),
            cid: small(w[1]),
            cmd_sn: w[2],
            exp_stat_sn: w[3],
        }),
        7 => Pdu::SnackRequest(SnackRequest {
            snack_type: [
                SnackType::DataR2t,
                SnackType::Status,
                SnackType::DataAck,
                SnackType::RData,
            ][(w[9] % 4) as usize],
            lun: Lun(lun),
            itt: Itt(w[0]),
            ttt: Ttt(w[1]),
            exp_stat_sn: w[2],
            beg_run: w[3],
            run_length: w[4],
        }),
        8 => Pdu::NopIn(NopIn {
            lun: Lun(lun),
            itt: Itt(w[0]),
            ttt: Ttt(w[1]),
            stat_sn: w[2],
            exp_cmd_sn: w[3],
            max_cmd_sn: w[4],
            data,
        }),
        9 => Pdu::ScsiResponse(ScsiResponse {
            bidi_read_residual: residual(w[8], w[6]),
            residual: residual(w[9], w[7]),
            response: w[5] as u8,
            status: (w[5] >> 8) as u8,
            itt: Itt(w[0]),
            snack_tag: w[1],
            stat_sn: w[2],
            exp_cmd_sn: w[3],
            max_cmd_sn: w[4],
            exp_data_sn: w[5],
            sense,
            response_data: data,
        }),
        10 => Pdu::TaskMgmtResponse(TaskMgmtResponse {
            response: [
                TaskMgmtResponseCode::FunctionComplete,
                TaskMgmtResponseCode::TaskDoesNotExist,
                TaskMgmtResponseCode::LunDoesNotExist,
                TaskMgmtResponseCode::TaskStillAllegiant,
                TaskMgmtResponseCode::ReassignmentNotSupported,
                TaskMgmtResponseCode::FunctionNotSupported,
                TaskMgmtResponseCode::AuthorizationFailed,
                TaskMgmtResponseCode::Rejected,
            ][(w[9] % 8) as usize],
            itt: Itt(w[0]),
            stat_sn: w[1],
            exp_cmd_sn: w[2],
            max_cmd_sn: w[3],
        }),
        11 => Pdu::LoginResponse(LoginResponse {
            transit: b[0],
            cont: b[1],
            csg: stage(w[8]),
            nsg: stage(w[9]),
            version_max: w[4] as u8,
            version_active: w[5] as u8,
            isid: Isid(cdb[..6].try_into().unwrap()),
            tsih: small(w[6]),
            itt: Itt(w[0]),
            stat_sn: w[1],
            exp_cmd_sn: w[2],
            max_cmd_sn: w[3],
            status: LoginStatus {
                class: w[7] as u8,
                detail: (w[7] >> 8) as u8,
            },
            data,
        }),
        12 => Pdu::TextResponse(TextResponse {
            fin: b[0],
            cont: b[1],
            lun: Lun(lun),
            itt: Itt(w[0]),
            ttt: Ttt(w[1]),
            stat_sn: w[2],
            exp_cmd_sn: w[3],
            max_cmd_sn: w[4],
            data,
        }),
        13 => Pdu::DataIn(DataIn {
            fin: b[0] || b[2],
            ack: b[1],
            lun: Lun(lun),
            itt: Itt(w[0]),
            ttt: Ttt(w[1]),
            exp_cmd_sn: w[2],
            max_cmd_sn: w[3],
            data_sn: w[4],
            buffer_offset: w[5],
            status: b[2].then_some(DataInStatus {
                status: w[6] as u8,
                stat_sn: w[7],
                residual: residual(w[9], w[8]),
            }),
            data,
        }),
        14 => Pdu::LogoutResponse(LogoutResponse {
            response: [
                LogoutResponseCode::Closed,
                LogoutResponseCode::CidNotFound,
                LogoutResponseCode::RecoveryNotSupported,
                LogoutResponseCode::CleanupFailed,
            ][(w[9] % 4) as usize],
            itt: Itt(w[0]),
            stat_sn: w[1],
            exp_cmd_sn: w[2],
            max_cmd_sn: w[3],
            time2wait: small(w[4]),
            time2retain: small(w[5]),
        }),
        15 => Pdu::R2t(R2t {
            lun: Lun(lun),
            itt: Itt(w[0]),
            ttt: Ttt(w[1]),
            stat_sn: w[2],
            exp_cmd_sn: w[3],
            max_cmd_sn: w[4],
            r2t_sn: w[5],
            buffer_offset: w[6],
            desired_len: w[7],
        }),
        16 => Pdu::AsyncMessage(AsyncMessage {
            lun: Lun(lun),
            stat_sn: w[0],
            exp_cmd_sn: w[1],
            max_cmd_sn: w[2],
            event: w[3] as u8,
            vcode: (w[3] >> 8) as u8,
            parameter1: small(w[4]),
            parameter2: small(w[5]),
            parameter3: small(w[6]),
            sense,
            event_data: data,
        }),
        _ => Pdu::Reject(Reject {
            reason: w[9] as u8,
            stat_sn: w[0],
            exp_cmd_sn: w[1],
            max_cmd_sn: w[2],
            data_sn: w[3],
            header: data,
        }),
    }
}

fn any_pdu() -> impl Strategy<Value = Pdu> {
    (
        any::<u8>(),
        any::<[u32; 10]>(),
        any::<[bool; 6]>(),
        any::<[u8; CDB_LEN]>(),
        prop_oneof![
            vec(any::<u8>(), 0..40),
            vec(any::<u8>(), 0..=MAX_EXTENDED_CDB_LEN)
        ],
        vec(any::<u8>(), 0..600),
        vec(any::<u8>(), 0..40),
        any::<u64>(),
    )
        .prop_map(|(kind, w, b, cdb, ext, data, sense, lun)| {
            build_pdu(kind, w, b, cdb, ext, data, sense, lun)
        })
}

fn any_digests() -> impl Strategy<Value = Digests> {
    (any::<bool>(), any::<bool>()).prop_map(|(header, data)| Digests { header, data })
}

/// Decodes arbitrary input the way a server would; checks nothing exceeds the limits.
fn decode_untrusted(frame: &[u8], digests: Digests, max_data: u32) {
    if let Some(bhs) = frame.first_chunk::<BHS_LEN>()
        && let Ok(len) = pdu_len_within(bhs, digests, max_data)
    {
        assert!(len <= MAX_PDU_LEN);
        assert!(len >= BHS_LEN);
    }
    if let Ok(pdu) = Pdu::decode(frame, digests, max_data) {
        // Whatever decodes re-encodes within the limits it was read under.
        let mut out = Vec::new();
        pdu.encode(digests, &mut out);
        assert!(out.len() <= frame.len() + MAX_AHS_LEN);
        let reencoded: &[u8; BHS_LEN] = out.first_chunk().unwrap();
        assert!(data_segment_len(reencoded) <= max_data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn generated_pdus_round_trip(pdu in any_pdu(), digests in any_digests()) {
        round_trip(&pdu, digests);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        frame in vec(any::<u8>(), 0..1200),
        digests in any_digests(),
        max_data in prop_oneof![Just(512u32), Just(8192), Just(MAX_DATA_SEGMENT_LEN)],
    ) {
        decode_untrusted(&frame, digests, max_data);
    }

    #[test]
    fn arbitrary_headers_with_consistent_lengths_never_panic(
        bhs in any::<[u8; BHS_LEN]>(),
        ahs_words in 0u8..8,
        data_len in 0u32..300,
        fill in any::<u8>(),
        digests in any_digests(),
    ) {
        // Random headers whose lengths agree with the frame reach the per-opcode decoders.
        let mut bhs = bhs;
        bhs[4] = ahs_words;
        bhs[5..8].copy_from_slice(&data_len.to_be_bytes()[1..]);
        let len = pdu_len(&bhs, digests).unwrap();
        let mut frame = bhs.to_vec();
        frame.resize(len, fill);
        decode_untrusted(&frame, Digests::NONE, 8192);
        if !digests.header && !digests.data {
            decode_untrusted(&frame, digests, 8192);
        }
    }

    #[test]
    fn mutated_frames_never_panic(
        pdu in any_pdu(),
        digests in any_digests(),
        flips in vec((any::<prop::sample::Index>(), 1u8..), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut frame = encode(&pdu, digests);
        for (at, mask) in &flips {
            let at = at.index(frame.len());
            frame[at] ^= mask;
        }
        if truncate {
            frame.truncate(cut.index(frame.len() + 1));
        }
        decode_untrusted(&frame, digests, 8192);
        decode_untrusted(&frame, digests, MAX_DATA_SEGMENT_LEN);
    }

    #[test]
    fn any_single_byte_error_is_caught_with_both_digests(
        pdu in any_pdu(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let mut frame = encode(&pdu, Digests::BOTH);
        let at = at.index(frame.len());
        frame[at] ^= mask;
        prop_assert!(Pdu::decode(&frame, Digests::BOTH, MAX_DATA_SEGMENT_LEN).is_err());
    }
}
