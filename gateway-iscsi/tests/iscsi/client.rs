//! The library initiator (`cairn_gateway_iscsi::initiator`) and the `cairn-iscsi-io` tool
//! against the in-process target: login with and without CHAP, READ CAPACITY, large writes
//! through immediate data, unsolicited Data-Out and R2Ts under several negotiated limits, and
//! errors returned (never panics) for refused logins and CHECK CONDITION.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    process::Command,
    thread::JoinHandle,
    time::Duration,
};

use cairn_gateway_iscsi::{
    initiator::{Initiator, InitiatorError, lun_from_number},
    login::OperationalLimits,
    pdu::{
        BHS_LEN, DataIn, DataInStatus, Digests, LoginResponse, LoginStatus, Lun, Pdu, PduError,
        ScsiResponse, Stage, pdu_len,
    },
    scsi::BlockDevice,
};

use crate::{
    harness::{BLOCK_SIZE, LUN_SIZE_BYTES, TestServer, TestTargetConfig, chap},
    initiator::{Rng, seed},
};

const TARGET: &str = "iqn.2026-12.io.cairn:client";
const INITIATOR: &str = "iqn.2026-12.io.cairn:client-test";
const CHAP_USER: &str = "alice";
const CHAP_SECRET: &str = "correct-horse-battery";
const TIMEOUT: Duration = Duration::from_secs(10);

fn chap_server() -> TestServer {
    TestServer::start(vec![TestTargetConfig {
        chap: Some(chap(CHAP_USER, CHAP_SECRET)),
        ..TestTargetConfig::open(TARGET)
    }])
}

fn connect(server: &TestServer) -> Initiator {
    Initiator::connect(server.address, TIMEOUT).expect("connect")
}

#[test]
fn login_without_chap_and_read_capacity() {
    // Goal: an open target accepts AuthMethod=None; READ CAPACITY (16) reports the LUN.
    let server = TestServer::start(vec![TestTargetConfig::open(TARGET)]);
    let mut initiator = connect(&server);
    assert!(matches!(
        initiator.read_capacity(),
        Err(InitiatorError::State(_))
    ));
    initiator.login(INITIATOR, TARGET, None).expect("login");
    let negotiated = initiator.negotiated().expect("negotiated parameters");
    let limits = OperationalLimits::default();
    assert_eq!(
        negotiated.target_max_recv_data_segment_len,
        limits.max_recv_data_segment_len
    );
    assert_eq!(negotiated.max_burst_len, limits.max_burst_len);
    assert_eq!(negotiated.first_burst_len, limits.first_burst_len);
    assert!(negotiated.immediate_data);
    assert!(!negotiated.initial_r2t);
    assert_ne!(negotiated.tsih, 0);
    let (blocks, block_size) = initiator.read_capacity().expect("read capacity");
    assert_eq!(block_size, BLOCK_SIZE);
    assert_eq!(blocks, LUN_SIZE_BYTES / u64::from(BLOCK_SIZE));
    initiator.logout().expect("logout");

    // An unknown target is a typed refusal.
    let mut initiator = connect(&server);
    let error = initiator
        .login(INITIATOR, "iqn.2026-12.io.cairn:nobody", None)
        .expect_err("unknown target");
    assert!(
        matches!(
            error,
            InitiatorError::LoginRefused {
                class: 2,
                detail: 3,
                ..
            }
        ),
        "{error}"
    );
    server.assert_no_panics();
}

#[test]
fn login_with_chap() {
    // Goal: CHAP succeeds with the right secret and fails, as an error, with a wrong secret,
    // a wrong user, or none at all.
    let server = chap_server();
    let mut initiator = connect(&server);
    initiator
        .login(INITIATOR, TARGET, Some((CHAP_USER, CHAP_SECRET.as_bytes())))
        .expect("CHAP login");
    assert_eq!(
        initiator.read_capacity().expect("read capacity").1,
        BLOCK_SIZE
    );
    initiator.logout().expect("logout");

    let refusals: [Option<(&str, &[u8])>; 3] = [
        Some((CHAP_USER, b"wrong-horse-battery")),
        Some(("mallory", CHAP_SECRET.as_bytes())),
        None,
    ];
    for credentials in refusals {
        let mut initiator = connect(&server);
        let error = initiator
            .login(INITIATOR, TARGET, credentials)
            .expect_err("a refused login");
        assert!(
            matches!(
                error,
                InitiatorError::LoginRefused {
                    class: 2,
                    detail: 1,
                    ..
                }
            ),
            "{error}"
        );
        assert!(!error.to_string().contains(CHAP_SECRET));
        // The connection is done for; later calls fail without touching the socket.
        assert!(matches!(
            initiator.read_capacity(),
            Err(InitiatorError::State(_) | InitiatorError::Broken)
        ));
    }
    server.assert_no_panics();
}

#[test]
fn write_and_read_back_under_several_limits() {
    // Goal: a 3 MiB write at an unaligned LBA reads back equal, whether its data travels as
    // immediate data, unsolicited Data-Out or R2T bursts. Method: one target per set of
    // offered limits; the device's bytes are checked too.
    let seed = seed();
    let mut rng = Rng::new(seed);
    let defaults = OperationalLimits::default();
    let limit_sets = [
        // Immediate data (64 KiB), then R2Ts of 1 MiB.
        defaults.clone(),
        // Immediate data (64 KiB), unsolicited Data-Out up to 384 KiB, R2Ts of 512 KiB in
        // 64 KiB PDUs.
        OperationalLimits {
            max_recv_data_segment_len: 64 * 1024,
            max_burst_len: 512 * 1024,
            first_burst_len: 384 * 1024,
            ..defaults.clone()
        },
        // Everything by R2T.
        OperationalLimits {
            immediate_data: false,
            initial_r2t: true,
            max_burst_len: 128 * 1024,
            ..defaults.clone()
        },
    ];
    for limits in limit_sets {
        let server = TestServer::with_limits(TARGET, limits.clone());
        let mut initiator = connect(&server);
        initiator.login(INITIATOR, TARGET, None).expect("login");
        let negotiated = initiator.negotiated().expect("negotiated");
        assert_eq!(negotiated.immediate_data, limits.immediate_data);
        assert_eq!(negotiated.initial_r2t, limits.initial_r2t);
        assert_eq!(
            negotiated.first_burst_len,
            limits.first_burst_len.min(limits.max_burst_len)
        );

        let data = rng.bytes(3 << 20);
        let lba = 1001;
        initiator.write(lba, &data).expect("write 3 MiB");
        let read = initiator
            .read(lba, (data.len() / BLOCK_SIZE as usize) as u32)
            .expect("read 3 MiB");
        assert!(read == data, "read back differs, limits {limits:?}");
        let on_device = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(server.devices[0].read(lba * u64::from(BLOCK_SIZE), data.len() as u32))
            .expect("device read");
        assert!(on_device == data, "device differs, limits {limits:?}");
        initiator.logout().expect("logout");
        server.assert_no_panics();
    }
}

#[test]
fn commands_go_to_the_lun_the_initiator_is_set_to() {
    // Goal: the initiator sends its commands to the LUN it is set to, LUN 0 by default.
    // Method: this target has LUN 0 only, so LUN 1 answers LOGICAL UNIT NOT SUPPORTED
    // (ILLEGAL REQUEST, 0x25/0x00) and the session goes on once set back.
    let server = TestServer::start(vec![TestTargetConfig::open(TARGET)]);
    let mut initiator = connect(&server);
    assert_eq!(initiator.lun(), Lun(0));
    initiator.login(INITIATOR, TARGET, None).expect("login");
    assert_eq!(initiator.read_capacity().expect("LUN 0").1, BLOCK_SIZE);
    initiator.set_lun(lun_from_number(1));
    assert_eq!(initiator.lun(), Lun(1 << 48));
    assert_eq!(
        initiator.block_size(),
        None,
        "another LUN, another block size"
    );
    let error = initiator.read_capacity().expect_err("no LUN 1");
    assert!(
        matches!(
            error,
            InitiatorError::CheckCondition {
                sense_key: 0x5,
                asc: 0x25,
                ascq: 0x00
            }
        ),
        "{error}"
    );
    assert!(!error.is_fatal());
    initiator.set_lun(Lun(0));
    initiator.write(8, &[7u8; 512]).expect("a write to LUN 0");
    assert_eq!(
        initiator.read(8, 1).expect("a read of LUN 0"),
        vec![7u8; 512]
    );
    initiator.logout().expect("logout");
    server.assert_no_panics();
}

#[test]
fn check_condition_is_an_error_and_the_session_survives() {
    // Goal: a read past the end comes back as CHECK CONDITION with ILLEGAL REQUEST / LBA OUT
    // OF RANGE, and the session goes on; a misaligned write is refused before sending.
    let server = TestServer::start(vec![TestTargetConfig::open(TARGET)]);
    let mut initiator = connect(&server);
    initiator.login(INITIATOR, TARGET, None).expect("login");
    let (blocks, _) = initiator.read_capacity().expect("read capacity");
    let error = initiator.read(blocks - 1, 2).expect_err("past the end");
    assert!(
        matches!(
            error,
            InitiatorError::CheckCondition {
                sense_key: 0x5,
                asc: 0x21,
                ascq: 0x00
            }
        ),
        "{error}"
    );
    assert!(!error.is_fatal());
    assert!(matches!(
        initiator.write(0, &[0u8; 100]),
        Err(InitiatorError::Unaligned { .. })
    ));
    let block = initiator.read(blocks - 1, 1).expect("the last block");
    assert_eq!(block.len(), BLOCK_SIZE as usize);
    initiator.logout().expect("logout");
    server.assert_no_panics();
}

fn cli() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cairn-iscsi-io"));
    command
        .env_remove("ISCSI_CHAP_USER")
        .env_remove("ISCSI_CHAP_SECRET")
        .env_remove("ISCSI_INITIATOR_NAME");
    command
}

#[test]
fn cli_writes_a_file_and_reads_it_back() {
    // Goal: `cairn-iscsi-io write` then `read` round-trips a file of more than one 1 MiB
    // command, with CHAP from the environment; usage and login errors give exit codes 2
    // and 1 without printing the secret.
    let server = chap_server();
    let portal = server.address.to_string();
    let mut rng = Rng::new(seed());
    let data = rng.bytes((1 << 20) + 3 * BLOCK_SIZE as usize);
    let path = std::env::temp_dir().join(format!(
        "cairn-iscsi-io-{}-{}.bin",
        std::process::id(),
        server.port()
    ));
    std::fs::write(&path, &data).expect("write the input file");
    let path_text = path.to_str().expect("a UTF-8 temp path");

    let written = cli()
        .args(["write", &portal, TARGET, "77", path_text])
        .env("ISCSI_CHAP_USER", CHAP_USER)
        .env("ISCSI_CHAP_SECRET", CHAP_SECRET)
        .output()
        .expect("run cairn-iscsi-io write");
    let _ = std::fs::remove_file(&path);
    assert!(
        written.status.success(),
        "write failed: {}",
        String::from_utf8_lossy(&written.stderr)
    );
    let blocks = (data.len() / BLOCK_SIZE as usize).to_string();
    let read = cli()
        .args(["read", &portal, TARGET, "77", &blocks])
        .env("ISCSI_CHAP_USER", CHAP_USER)
        .env("ISCSI_CHAP_SECRET", CHAP_SECRET)
        .env("ISCSI_INITIATOR_NAME", INITIATOR)
        .output()
        .expect("run cairn-iscsi-io read");
    assert!(
        read.status.success(),
        "read failed: {}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert!(read.stdout == data, "read back differs");

    let usage = cli().args(["read", &portal]).output().expect("run");
    assert_eq!(usage.status.code(), Some(2));
    let refused = cli()
        .args(["read", &portal, TARGET, "0", "1"])
        .env("ISCSI_CHAP_USER", CHAP_USER)
        .env("ISCSI_CHAP_SECRET", "wrong-secret-value")
        .output()
        .expect("run");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("authentication failure"), "{stderr}");
    assert!(!stderr.contains("wrong-secret-value"), "{stderr}");
    assert!(refused.stdout.is_empty());
    server.assert_no_panics();
}

/// What a scripted target does with each SCSI command.
#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// Data-In of 64 bytes for a 32-byte READ CAPACITY (16).
    DataInOverrun,
    /// A Data-In header announcing a 16 MiB - 1 data segment.
    HugeSegment,
    /// Nothing at all.
    Silence,
    /// A SCSI Response for another task.
    WrongTask,
    /// An opcode RFC 7143 does not define.
    UnknownOpcode,
    /// Closes the connection.
    Hangup,
}

/// A one-connection target on the crate's codec: logs anyone in (no keys answered, so the
/// initiator keeps RFC 7143 defaults), then answers the first SCSI command with
/// `misbehaviour`.
fn scripted_target(misbehaviour: Misbehaviour) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut stat_sn = 1u32;
        loop {
            let mut bhs = [0u8; BHS_LEN];
            if stream.read_exact(&mut bhs).is_err() {
                return;
            }
            let mut frame = bhs.to_vec();
            frame.resize(pdu_len(&bhs, Digests::NONE).expect("a length"), 0);
            stream.read_exact(&mut frame[BHS_LEN..]).expect("a PDU");
            let pdu = Pdu::decode(&frame, Digests::NONE, u32::MAX).expect("a valid PDU");
            stat_sn += 1;
            let mut out = Vec::new();
            match pdu {
                Pdu::LoginRequest(request) => {
                    let full = request.nsg == Stage::FullFeature;
                    let response = LoginResponse {
                        transit: true,
                        cont: false,
                        csg: request.csg,
                        nsg: request.nsg,
                        version_max: 0,
                        version_active: 0,
                        isid: request.isid,
                        tsih: if full { 7 } else { 0 },
                        itt: request.itt,
                        stat_sn,
                        exp_cmd_sn: request.cmd_sn,
                        max_cmd_sn: request.cmd_sn + 8,
                        status: LoginStatus::SUCCESS,
                        data: Vec::new(),
                    };
                    Pdu::LoginResponse(response).encode(Digests::NONE, &mut out);
                }
                Pdu::ScsiCommand(command) => match misbehaviour {
                    Misbehaviour::DataInOverrun => {
                        let data_in = DataIn {
                            fin: true,
                            itt: command.itt,
                            exp_cmd_sn: command.cmd_sn + 1,
                            max_cmd_sn: command.cmd_sn + 8,
                            status: Some(DataInStatus {
                                stat_sn,
                                ..DataInStatus::default()
                            }),
                            data: vec![0u8; 64],
                            ..DataIn::default()
                        };
                        Pdu::DataIn(data_in).encode(Digests::NONE, &mut out);
                    }
                    Misbehaviour::HugeSegment => {
                        out = vec![0u8; BHS_LEN];
                        out[0] = 0x25;
                        out[1] = 0x80;
                        out[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
                    }
                    Misbehaviour::Silence => {}
                    Misbehaviour::WrongTask => {
                        let response = ScsiResponse {
                            itt: cairn_gateway_iscsi::pdu::Itt(command.itt.0 ^ 1),
                            stat_sn,
                            exp_cmd_sn: command.cmd_sn + 1,
                            max_cmd_sn: command.cmd_sn + 8,
                            ..ScsiResponse::default()
                        };
                        Pdu::ScsiResponse(response).encode(Digests::NONE, &mut out);
                    }
                    Misbehaviour::UnknownOpcode => {
                        out = vec![0u8; BHS_LEN];
                        out[0] = 0x3c;
                        out[1] = 0x80;
                    }
                    Misbehaviour::Hangup => return,
                },
                _ => {}
            }
            if stream.write_all(&out).is_err() {
                return;
            }
        }
    });
    (address, thread)
}

#[test]
fn a_misbehaving_target_gets_errors_not_panics() {
    // Goal: whatever the target sends after login, the initiator returns a typed error
    // (never panics, never reads a segment it did not offer to take), and refuses further
    // commands on the broken connection. Method: a scripted target per misbehaviour.
    let cases = [
        Misbehaviour::DataInOverrun,
        Misbehaviour::HugeSegment,
        Misbehaviour::Silence,
        Misbehaviour::WrongTask,
        Misbehaviour::UnknownOpcode,
        Misbehaviour::Hangup,
    ];
    for misbehaviour in cases {
        let (address, thread) = scripted_target(misbehaviour);
        let mut initiator =
            Initiator::connect(address, Duration::from_millis(500)).expect("connect");
        initiator.login(INITIATOR, TARGET, None).expect("login");
        let negotiated = initiator.negotiated().expect("negotiated");
        assert_eq!(negotiated.target_max_recv_data_segment_len, 8192);
        assert!(negotiated.initial_r2t, "RFC 7143 default");
        let error = initiator.read_capacity().expect_err("a misbehaving target");
        println!("{misbehaviour:?}: {error}");
        let expected = match misbehaviour {
            Misbehaviour::DataInOverrun => {
                matches!(error, InitiatorError::DataInOverrun { expected: 32, .. })
            }
            Misbehaviour::HugeSegment => {
                matches!(error, InitiatorError::Pdu(PduError::Disconnect(_)))
            }
            Misbehaviour::Silence => matches!(error, InitiatorError::TimedOut { .. }),
            Misbehaviour::WrongTask => matches!(error, InitiatorError::Protocol(_)),
            Misbehaviour::UnknownOpcode => {
                matches!(error, InitiatorError::Pdu(PduError::Reject { .. }))
            }
            Misbehaviour::Hangup => matches!(error, InitiatorError::Closed),
        };
        assert!(expected, "{misbehaviour:?}: {error:?}");
        assert!(error.is_fatal());
        assert!(matches!(initiator.read(0, 1), Err(InitiatorError::Broken)));
        initiator
            .logout()
            .expect("logout of a broken connection only closes it");
        thread.join().expect("the scripted target");
    }
}
