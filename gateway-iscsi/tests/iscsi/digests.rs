//! CRC32C header and data digests end to end: the library initiator with both digests on
//! writes and reads through immediate data, unsolicited Data-Out and R2Ts; and data that
//! fails its digest is never written (RFC 7143 section 7.8 at ErrorRecoveryLevel 0: the PDU
//! is rejected and discarded, a Data-Out's command fails with PROTOCOL SERVICE CRC ERROR once
//! its sequence has ended, a command whose own data failed is dropped whole).

use std::time::Duration;

use cairn_gateway_iscsi::{
    initiator::{Initiator, InitiatorError},
    login::OperationalLimits,
    pdu::{BHS_LEN, DataOut, Digests, Lun, Pdu, ScsiCommand, reject_reason},
    scsi::BlockDevice,
};

use crate::{
    harness::{BLOCK_SIZE, TestServer},
    initiator::{Client, READ_10, Rng, WRITE_10, rw10, seed},
};

const TARGET: &str = "iqn.2026-12.io.cairn:digests";
const INITIATOR: &str = "iqn.2026-12.io.cairn:digests-test";
/// SCSI status CHECK CONDITION.
const CHECK_CONDITION: u8 = 0x02;

fn device_bytes(server: &TestServer, lba: u64, len: usize) -> Vec<u8> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(server.devices[0].read(lba * u64::from(BLOCK_SIZE), len as u32))
        .expect("device read")
}

#[test]
fn library_initiator_with_both_digests_writes_and_reads() {
    // Goal: with HeaderDigest and DataDigest CRC32C negotiated, writes whose data travels as
    // immediate data, unsolicited Data-Out and R2T bursts read back equal, on the wire and on
    // the device. Method: the library initiator proposing both digests, one target per set
    // of offered limits, writes of several sizes at unaligned LBAs.
    let mut rng = Rng::new(seed());
    let defaults = OperationalLimits::default();
    let limit_sets = [
        defaults.clone(),
        OperationalLimits {
            max_recv_data_segment_len: 16 * 1024,
            max_burst_len: 512 * 1024,
            first_burst_len: 256 * 1024,
            ..defaults.clone()
        },
        OperationalLimits {
            immediate_data: false,
            initial_r2t: true,
            max_burst_len: 128 * 1024,
            ..defaults.clone()
        },
    ];
    for limits in limit_sets {
        let server = TestServer::with_limits(TARGET, limits.clone());
        let mut initiator =
            Initiator::connect(server.address, Duration::from_secs(10)).expect("connect");
        initiator.set_digests(Digests::BOTH).expect("before login");
        initiator.login(INITIATOR, TARGET, None).expect("login");
        let negotiated = initiator.negotiated().expect("negotiated");
        assert_eq!(negotiated.digests, Digests::BOTH);
        assert!(matches!(
            initiator.set_digests(Digests::NONE),
            Err(InitiatorError::State(_))
        ));
        let mut lba = 3;
        for len_blocks in [1usize, 7, 130, 2048, 6144] {
            let data = rng.bytes(len_blocks * BLOCK_SIZE as usize);
            initiator.write(lba, &data).expect("write");
            let read = initiator.read(lba, len_blocks as u32).expect("read");
            assert!(
                read == data,
                "{len_blocks} blocks read back differ, {limits:?}"
            );
            assert!(
                device_bytes(&server, lba, data.len()) == data,
                "{len_blocks} blocks differ on the device, {limits:?}"
            );
            lba += len_blocks as u64 + 1;
        }
        initiator.logout().expect("logout");
        server.assert_no_panics();
    }
}

/// A session with both digests, everything sent by R2T of at most `max_burst` bytes, and
/// Data-Out PDUs of 16 KiB.
fn digest_client(server: &TestServer, immediate_data: bool, max_burst: u32) -> Client {
    let mut client = Client::connect(server.address);
    let max_burst = max_burst.to_string();
    let immediate = if immediate_data { "Yes" } else { "No" };
    let response = client.login(
        Some(TARGET),
        &[
            ("HeaderDigest", "CRC32C"),
            ("DataDigest", "CRC32C"),
            ("ImmediateData", immediate),
            ("InitialR2T", "Yes"),
            ("MaxBurstLength", &max_burst),
            ("FirstBurstLength", "65536"),
        ],
    );
    assert!(response.status.is_success(), "{:?}", response.status);
    assert_eq!(client.digests, Digests::BOTH);
    // Smaller than the target takes, so that one R2T is answered in many PDUs.
    client.target_max_recv = 16 * 1024;
    client
}

/// `pdu` with both digests, its data digest made wrong.
fn with_bad_data_digest(pdu: &Pdu) -> Vec<u8> {
    let mut bytes = Vec::new();
    pdu.encode(Digests::BOTH, &mut bytes);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x5a;
    bytes
}

fn write_good(client: &mut Client, lba: u32, data: &[u8]) {
    let blocks = (data.len() / BLOCK_SIZE as usize) as u16;
    let done = client.command(&rw10(WRITE_10, lba, blocks), 0, data);
    assert_eq!(done.status, 0, "{:?}", done.sense);
}

fn read(client: &mut Client, lba: u32, len: usize) -> Vec<u8> {
    let blocks = (len / BLOCK_SIZE as usize) as u16;
    let done = client.command(&rw10(READ_10, lba, blocks), len as u32, &[]);
    assert_eq!(done.status, 0, "{:?}", done.sense);
    done.data_in
}

#[test]
fn a_data_out_with_a_bad_data_digest_fails_its_command_and_writes_nothing() {
    // Goal: RFC 7143 section 7.8 at ErrorRecoveryLevel 0. A Data-Out whose data digest is
    // wrong is answered with a Reject (Data-Digest-Error) and discarded; its command asks for
    // no more data and, once the R2T's sequence has ended, fails with CHECK CONDITION,
    // ABORTED COMMAND / PROTOCOL SERVICE CRC ERROR (0x47/0x05). Nothing of the write reaches
    // the device, its budget comes back, and the session goes on. Method: a raw client with
    // both digests answers the first R2T of a 1 MiB write with one corrupted PDU among
    // sixteen; NOP-Out barriers show what the target sent and when.
    let server = TestServer::with_limits(TARGET, OperationalLimits::default());
    let mut client = digest_client(&server, false, 256 * 1024);
    let mut rng = Rng::new(seed());
    let lba = 100;
    let old = rng.bytes(1 << 20);
    write_good(&mut client, lba, &old);

    let new = rng.bytes(1 << 20);
    let blocks = (new.len() / BLOCK_SIZE as usize) as u16;
    let itt = client.send_command(&rw10(WRITE_10, lba, blocks), 0, new.len() as u32, false);
    let Pdu::R2t(r2t) = client.recv() else {
        panic!("expected the first R2T");
    };
    assert_eq!(
        (r2t.itt, r2t.buffer_offset, r2t.desired_len),
        (itt, 0, 256 * 1024)
    );
    let segment = client.target_max_recv as usize;
    let pieces: Vec<&[u8]> = new[..r2t.desired_len as usize].chunks(segment).collect();
    assert_eq!(pieces.len(), 16);
    let mut corrupted_header = Vec::new();
    for (data_sn, piece) in pieces.iter().enumerate() {
        let pdu = Pdu::DataOut(DataOut {
            fin: data_sn + 1 == pieces.len(),
            lun: Lun(0),
            itt,
            ttt: r2t.ttt,
            exp_stat_sn: client.exp_stat_sn,
            data_sn: data_sn as u32,
            buffer_offset: (data_sn * segment) as u32,
            data: piece.to_vec(),
        });
        if data_sn == 3 {
            let bytes = with_bad_data_digest(&pdu);
            corrupted_header = bytes[..BHS_LEN].to_vec();
            client.send_raw(&bytes);
        } else if data_sn + 1 == pieces.len() {
            // Before the sequence ends: a Reject, and no answer yet.
            let before = client.barrier();
            assert_eq!(before.len(), 1, "{before:?}");
            let Pdu::Reject(reject) = &before[0] else {
                panic!("expected a Reject: {before:?}");
            };
            assert_eq!(reject.reason, reject_reason::DATA_DIGEST_ERROR);
            assert_eq!(reject.header, corrupted_header);
            assert_eq!(
                server.budget().in_use_bytes,
                0,
                "the lost write keeps no budget"
            );
            client.send(&pdu);
        } else {
            client.send(&pdu);
        }
    }
    // The sequence has ended: the command fails, and asks for nothing more.
    let Pdu::ScsiResponse(response) = client.recv() else {
        panic!("expected the SCSI Response");
    };
    assert_eq!(response.itt, itt);
    assert_eq!(response.status, CHECK_CONDITION);
    let sense = cairn_gateway_iscsi::initiator::parse_sense(&response.sense);
    assert_eq!(sense, (0x0b, 0x47, 0x05), "{:?}", response.sense);
    assert!(client.barrier().is_empty());

    assert!(
        read(&mut client, lba, old.len()) == old,
        "corrupt data was written"
    );
    assert!(device_bytes(&server, u64::from(lba), old.len()) == old);
    // The session goes on.
    let newer = rng.bytes(64 * 1024);
    write_good(&mut client, lba, &newer);
    assert!(read(&mut client, lba, newer.len()) == newer);
    server.assert_no_panics();
}

#[test]
fn a_command_whose_immediate_data_fails_its_digest_is_dropped() {
    // Goal: a SCSI Command whose immediate data fails its digest is rejected and discarded
    // whole (RFC 7143 section 7.8: the non-data PDU rule), so it is neither answered nor
    // written, and the commands after it run (the target skips its CmdSN). Method: a raw
    // client with both digests and ImmediateData=Yes.
    let server = TestServer::with_limits(TARGET, OperationalLimits::default());
    let mut client = digest_client(&server, true, 256 * 1024);
    let mut rng = Rng::new(seed());
    let lba = 40;
    let data = rng.bytes(8 * BLOCK_SIZE as usize);
    let mut cdb = [0u8; 16];
    cdb[..10].copy_from_slice(&rw10(WRITE_10, lba, 8));
    let command = Pdu::ScsiCommand(ScsiCommand {
        fin: true,
        write: true,
        lun: Lun(0),
        itt: client.itt(),
        expected_data_len: data.len() as u32,
        cmd_sn: client.cmd_sn,
        exp_stat_sn: client.exp_stat_sn,
        cdb,
        data: data.clone(),
        ..ScsiCommand::default()
    });
    client.cmd_sn = client.cmd_sn.wrapping_add(1);
    client.send_raw(&with_bad_data_digest(&command));
    let before = client.barrier();
    assert_eq!(before.len(), 1, "{before:?}");
    let Pdu::Reject(reject) = &before[0] else {
        panic!("expected a Reject: {before:?}");
    };
    assert_eq!(reject.reason, reject_reason::DATA_DIGEST_ERROR);
    assert!(device_bytes(&server, u64::from(lba), data.len()) == vec![0u8; data.len()]);
    // The next command, one CmdSN further, runs.
    write_good(&mut client, lba, &data);
    assert!(read(&mut client, lba, data.len()) == data);
    server.assert_no_panics();
}
