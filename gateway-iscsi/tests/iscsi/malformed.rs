//! Malformed input never panics or hangs the server: it rejects the PDU or drops the
//! connection, and keeps serving other connections.

use cairn_gateway_iscsi::{
    login::text,
    pdu::{BHS_LEN, Digests, Itt, Lun, NopOut, Pdu, SnackRequest, SnackType, Ttt, reject_reason},
};

use crate::{
    harness::{TestServer, TestTargetConfig},
    initiator::{Client, Rng, seed},
};

const TARGET: &str = "iqn.2026-12.io.cairn:malformed";

fn server() -> TestServer {
    TestServer::start(vec![TestTargetConfig::open(TARGET)])
}

/// The server still logs a new initiator in and runs a command.
fn assert_serving(server: &TestServer) {
    let mut client = Client::connect(server.address);
    client.login_normal(TARGET, 256 * 1024);
    let ready = client.command(&[0u8; 6], 0, &[]);
    assert_eq!(ready.status, 0);
    server.assert_no_panics();
}

/// Random bytes after a valid login (seeded, printed): the server answers or drops the
/// connection, and closes it once we stop sending.
#[test]
fn random_bytes_after_login() {
    let server = server();
    let mut rng = Rng::new(seed());
    for round in 0..8 {
        let mut client = Client::connect(server.address);
        client.login_normal(TARGET, 256 * 1024);
        let len = 48 + (rng.next_u64() % 4096) as usize;
        let mut bytes = rng.bytes(len);
        if round % 2 == 0 {
            // Keep lengths small so the bytes are read as several PDUs, not one huge claim.
            bytes[4] = 0;
            bytes[5] = 0;
        }
        // The server may have closed already: a failed send is fine.
        use std::io::Write;
        let stream = client_stream(&mut client);
        let _ = stream.write_all(&bytes);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // The server closes on end of input; the client's 10 s read timeout would hide a
        // hang, so time it.
        let start = std::time::Instant::now();
        client.wait_closed();
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "round {round}: the server did not close the connection"
        );
    }
    assert_serving(&server);
}

fn client_stream(client: &mut Client) -> &mut std::net::TcpStream {
    client.stream_mut()
}

/// Half a BHS, then the connection closes: in login and in full feature phase.
#[test]
fn truncated_pdu_then_close() {
    let server = server();
    {
        let mut client = Client::connect(server.address);
        client.send_raw(&[0x43, 0x87, 0, 0, 0, 0, 0, 10]);
    }
    {
        let mut client = Client::connect(server.address);
        client.login_normal(TARGET, 256 * 1024);
        let mut bytes = Vec::new();
        Pdu::NopOut(NopOut {
            immediate: true,
            itt: Itt(1),
            ttt: Ttt::RESERVED,
            data: vec![0u8; 1000],
            ..NopOut::default()
        })
        .encode(Digests::NONE, &mut bytes);
        client.send_raw(&bytes[..bytes.len() - 10]);
    }
    assert_serving(&server);
}

/// A data segment length beyond what we declared drops the connection at once, in login
/// and after it.
#[test]
fn huge_data_segment_claim_disconnects() {
    let server = server();
    let mut bhs = [0u8; BHS_LEN];
    bhs[0] = 0x43;
    bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    let mut client = Client::connect(server.address);
    client.send_raw(&bhs);
    assert!(client.wait_closed().is_empty());
    let mut client = Client::connect(server.address);
    client.login_normal(TARGET, 256 * 1024);
    bhs[0] = 0x40;
    client.send_raw(&bhs);
    assert!(client.wait_closed().is_empty());
    assert_serving(&server);
}

/// An unknown opcode and a SNACK are rejected and the session goes on.
#[test]
fn unknown_opcode_is_rejected() {
    let server = server();
    let mut client = Client::connect(server.address);
    client.login_normal(TARGET, 256 * 1024);
    let mut bhs = [0u8; BHS_LEN];
    bhs[0] = 0x1c;
    bhs[1] = 0x80;
    client.send_raw(&bhs);
    let Pdu::Reject(reject) = client.recv() else {
        panic!("expected a Reject");
    };
    assert_eq!(reject.reason, reject_reason::COMMAND_NOT_SUPPORTED);
    assert_eq!(reject.header, bhs.to_vec());
    // ErrorRecoveryLevel 0: SNACK is rejected too.
    let snack = Pdu::SnackRequest(SnackRequest {
        snack_type: SnackType::Status,
        lun: Lun(0),
        itt: Itt::RESERVED,
        ttt: Ttt::RESERVED,
        exp_stat_sn: client.exp_stat_sn,
        beg_run: 0,
        run_length: 0,
    });
    client.send(&snack);
    let Pdu::Reject(reject) = client.recv() else {
        panic!("expected a Reject");
    };
    assert_eq!(reject.reason, reject_reason::SNACK_REJECT);
    let ready = client.command(&[0u8; 6], 0, &[]);
    assert_eq!(ready.status, 0);
}

/// With digests on, a bad data digest is rejected and the session goes on; a bad header
/// digest drops the connection.
#[test]
fn digest_errors() {
    let server = server();
    let mut client = Client::connect(server.address);
    let response = client.login(
        Some(TARGET),
        &[("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")],
    );
    assert!(response.status.is_success());
    assert_eq!(client.digests, Digests::BOTH);
    let pairs = text::parse(&response.data).expect("login text");
    assert_eq!(text::get(&pairs, "HeaderDigest"), Some("CRC32C"));
    let ping = Pdu::NopOut(NopOut {
        immediate: true,
        lun: Lun(0),
        itt: Itt(77),
        ttt: Ttt::RESERVED,
        cmd_sn: client.cmd_sn,
        exp_stat_sn: 0,
        data: b"digest me".to_vec(),
    });
    let mut bytes = Vec::new();
    ping.encode(Digests::BOTH, &mut bytes);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    client.send_raw(&bytes);
    let Pdu::Reject(reject) = client.recv() else {
        panic!("expected a Reject");
    };
    assert_eq!(reject.reason, reject_reason::DATA_DIGEST_ERROR);
    client.send(&ping);
    let Pdu::NopIn(reply) = client.recv() else {
        panic!("expected a NOP-In");
    };
    assert_eq!(reply.data, b"digest me");
    let mut bytes = Vec::new();
    ping.encode(Digests::BOTH, &mut bytes);
    bytes[BHS_LEN] ^= 0xff;
    client.send_raw(&bytes);
    assert!(client.wait_closed().is_empty());
    assert_serving(&server);
}
