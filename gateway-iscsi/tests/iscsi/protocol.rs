//! Protocol paths driven by the crate's own test initiator: R2T-driven writes, reads,
//! pings both ways, task management, the CmdSN window, discovery and logout.

use std::time::Duration;

use cairn_gateway_iscsi::{
    login::text,
    pdu::{
        Itt, LogoutReason, LogoutRequest, LogoutResponseCode, Lun, NopOut, Pdu, Residual,
        TaskMgmtFunction, TaskMgmtRequest, TaskMgmtResponseCode, TextRequest, Ttt, reject_reason,
    },
    scsi::BlockDevice,
};

use crate::{
    harness::{BLOCK_SIZE, TestServer, TestTargetConfig},
    initiator::{Client, READ_10, WRITE_10, rw10},
};

const TARGET: &str = "iqn.2026-12.io.cairn:protocol";

fn server() -> TestServer {
    TestServer::start(vec![TestTargetConfig::open(TARGET)])
}

fn nop(client: &mut Client, data: &[u8]) -> Pdu {
    let itt = client.itt();
    client.send(&Pdu::NopOut(NopOut {
        immediate: true,
        lun: Lun(0),
        itt,
        ttt: Ttt::RESERVED,
        cmd_sn: client.cmd_sn,
        exp_stat_sn: client.exp_stat_sn,
        data: data.to_vec(),
    }));
    client.recv()
}

/// Writes 1 MiB with every byte solicited by R2T (MaxBurstLength 256 KiB: four R2Ts), reads
/// it back in one READ, and checks the bytes, the status and the residual.
#[test]
fn write_1mib_with_r2ts_and_read_back() {
    let server = server();
    let mut client = Client::connect(server.address);
    client.login_normal(TARGET, 256 * 1024);
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|index| (index * 7 + index / 512) as u8)
        .collect();
    let blocks = (data.len() / BLOCK_SIZE as usize) as u16;
    let write = client.command(&rw10(WRITE_10, 8, blocks), 0, &data);
    assert_eq!(write.status, 0, "write sense {:?}", write.sense);
    assert_eq!(write.r2ts, 4);
    assert_eq!(write.residual, Residual::None);
    // The status came after the device took the write: the bytes are there.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let stored = runtime
        .block_on(server.devices[0].read(8 * 512, data.len() as u32))
        .expect("device read");
    assert!(stored == data, "the device holds different bytes");
    let read = client.command(&rw10(READ_10, 8, blocks), data.len() as u32, &[]);
    assert_eq!(read.status, 0);
    assert_eq!(read.residual, Residual::None);
    assert!(read.data_in == data, "read back different bytes");
    server.assert_no_panics();
}

/// A READ whose expected length is larger than the data underflows; one to LUN 1 fails
/// with LOGICAL UNIT NOT SUPPORTED.
#[test]
fn residuals_and_unsupported_lun() {
    let server = server();
    let mut client = Client::connect(server.address);
    client.login_normal(TARGET, 256 * 1024);
    let read = client.command(&rw10(READ_10, 0, 1), 10_000, &[]);
    assert_eq!(read.status, 0);
    assert_eq!(read.data_in.len(), 512);
    assert_eq!(read.residual, Residual::Underflow(10_000 - 512));
    let read = client.command(&rw10(READ_10, 0, 2), 200, &[]);
    assert_eq!(read.data_in.len(), 200);
    assert_eq!(read.residual, Residual::Overflow(1024 - 200));
    let itt = client.itt();
    let mut cdb = [0u8; 16];
    cdb[..10].copy_from_slice(&rw10(READ_10, 0, 1));
    client.send(&Pdu::ScsiCommand(cairn_gateway_iscsi::pdu::ScsiCommand {
        fin: true,
        read: true,
        lun: Lun(1 << 48),
        itt,
        expected_data_len: 512,
        cmd_sn: client.cmd_sn,
        cdb,
        ..Default::default()
    }));
    client.cmd_sn += 1;
    let completion = client.complete(itt, &[]);
    assert_eq!(completion.status, 0x02);
    assert_eq!((completion.sense[12], completion.sense[13]), (0x25, 0x00));
}

/// A NOP-Out ping is answered with its data; a NOP-Out that answers a NOP-In is not.
#[test]
fn nop_out_ping_echoes_data() {
    let server = server();
    let mut client = Client::connect(server.address);
    client.login_normal(TARGET, 256 * 1024);
    let Pdu::NopIn(reply) = nop(&mut client, b"are you there") else {
        panic!("expected a NOP-In");
    };
    assert_eq!(reply.data, b"are you there");
    assert_eq!(reply.ttt, Ttt::RESERVED);
    assert_eq!(reply.exp_cmd_sn, client.cmd_sn);
    assert!(reply.max_cmd_sn.wrapping_sub(reply.exp_cmd_sn) < 1 << 16);
}

/// A silent initiator gets NOP-In pings; answering keeps it, silence drops it.
#[test]
fn idle_initiator_is_pinged_then_dropped() {
    let server = TestServer::start_with(vec![TestTargetConfig::open(TARGET)], None, |config| {
        config.nop_interval = Duration::from_millis(200);
        config.nop_timeout = Duration::from_millis(400);
    });
    let mut client = Client::connect(server.address);
    client.login_normal(TARGET, 256 * 1024);
    for _ in 0..2 {
        let Pdu::NopIn(ping) = client.recv() else {
            panic!("expected a NOP-In ping");
        };
        assert_eq!(ping.itt, Itt::RESERVED);
        assert_ne!(ping.ttt, Ttt::RESERVED);
        client.send(&Pdu::NopOut(NopOut {
            immediate: true,
            lun: ping.lun,
            itt: Itt::RESERVED,
            ttt: ping.ttt,
            cmd_sn: client.cmd_sn,
            exp_stat_sn: client.exp_stat_sn,
            data: Vec::new(),
        }));
    }
    let start = std::time::Instant::now();
    let seen = client.wait_closed();
    assert!(seen.iter().all(|pdu| matches!(pdu, Pdu::NopIn(_))));
    assert!(start.elapsed() < Duration::from_secs(5), "dropped too late");
}

/// ABORT TASK on a write waiting for its R2T data: Function Complete, no SCSI Response for
/// it, its late Data-Out ignored; a second abort finds no task.
#[test]
fn abort_task_waiting_for_data() {
    let server = server();
    let mut client = Client::connect(server.address);
    client.login_normal(TARGET, 256 * 1024);
    let write_itt = client.send_command(&rw10(WRITE_10, 0, 128), 0, 128 * 512, false);
    let write_cmd_sn = client.cmd_sn - 1;
    let Pdu::R2t(r2t) = client.recv() else {
        panic!("expected an R2T");
    };
    let abort = |client: &mut Client| {
        let itt = client.itt();
        client.send(&Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: TaskMgmtFunction::AbortTask,
            lun: Lun(0),
            itt,
            referenced_task_tag: write_itt,
            cmd_sn: client.cmd_sn,
            exp_stat_sn: client.exp_stat_sn,
            ref_cmd_sn: write_cmd_sn,
            exp_data_sn: 0,
        }));
        match client.recv() {
            Pdu::TaskMgmtResponse(response) => {
                assert_eq!(response.itt, itt);
                response.response
            }
            other => panic!("expected a TMF response, got {other:?}"),
        }
    };
    assert_eq!(abort(&mut client), TaskMgmtResponseCode::FunctionComplete);
    client.send_data_out(write_itt, r2t.ttt, &vec![1u8; r2t.desired_len as usize], 0);
    assert_eq!(abort(&mut client), TaskMgmtResponseCode::TaskDoesNotExist);
    // The session goes on, and the aborted write's slot in the window is free again.
    let Pdu::NopIn(_) = nop(&mut client, b"") else {
        panic!("expected a NOP-In");
    };
    let read = client.command(&rw10(READ_10, 0, 1), 512, &[]);
    assert_eq!(read.status, 0);
    assert_eq!(
        read.data_in,
        vec![0u8; 512],
        "the aborted write wrote nothing"
    );
}

/// A command beyond MaxCmdSN is ignored silently; the next one in the window runs.
#[test]
fn command_beyond_the_window_is_ignored() {
    let server = server();
    let mut client = Client::connect(server.address);
    client.login_normal(TARGET, 256 * 1024);
    let Pdu::NopIn(reply) = nop(&mut client, b"") else {
        panic!("expected a NOP-In");
    };
    let saved = client.cmd_sn;
    client.cmd_sn = reply.max_cmd_sn.wrapping_add(1);
    client.send_command(&[0u8; 6], 0, 0, false);
    client.cmd_sn = saved;
    let Pdu::NopIn(_) = nop(&mut client, b"after") else {
        panic!("the out-of-window command was answered");
    };
    let ready = client.command(&[0u8; 6], 0, &[]);
    assert_eq!(ready.status, 0);
}

/// Logout closes the session: a Logout Response, then the connection ends.
#[test]
fn logout_closes_the_connection() {
    let server = server();
    let mut client = Client::connect(server.address);
    client.login_normal(TARGET, 256 * 1024);
    let itt = client.itt();
    client.send(&Pdu::LogoutRequest(LogoutRequest {
        immediate: true,
        reason: LogoutReason::CloseSession,
        itt,
        cid: 1,
        cmd_sn: client.cmd_sn,
        exp_stat_sn: client.exp_stat_sn,
    }));
    let Pdu::LogoutResponse(response) = client.recv() else {
        panic!("expected a Logout Response");
    };
    assert_eq!(response.response, LogoutResponseCode::Closed);
    assert!(client.wait_closed().is_empty());
}

/// A discovery session answers SendTargets=All and rejects SCSI commands.
#[test]
fn discovery_session_send_targets() {
    let server = server();
    let mut client = Client::connect(server.address);
    let response = client.login(None, &[]);
    assert!(response.status.is_success());
    let mut data = Vec::new();
    text::encode(&[("SendTargets", "All")], &mut data);
    let itt = client.itt();
    client.send(&Pdu::TextRequest(TextRequest {
        immediate: true,
        fin: true,
        cont: false,
        lun: Lun(0),
        itt,
        ttt: Ttt::RESERVED,
        cmd_sn: client.cmd_sn,
        exp_stat_sn: client.exp_stat_sn,
        data,
    }));
    let Pdu::TextResponse(answer) = client.recv() else {
        panic!("expected a Text Response");
    };
    let pairs = text::parse(&answer.data).expect("SendTargets text");
    assert_eq!(text::get(&pairs, "TargetName"), Some(TARGET));
    assert_eq!(
        text::get(&pairs, "TargetAddress"),
        Some(format!("{},1", server.address).as_str())
    );
    client.send_command(&[0u8; 6], 0, 0, false);
    let Pdu::Reject(reject) = client.recv() else {
        panic!("expected a Reject");
    };
    assert_eq!(reject.reason, reject_reason::PROTOCOL_ERROR);
}
